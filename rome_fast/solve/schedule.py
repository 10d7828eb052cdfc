"""MEMIT's multi-layer schedule (also EMMET's and AlphaEdit's), model-free: the steps are
callables the editor supplies (SPEC §7, ``rome_ref.batched.memit_schedule``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from rome_fast.solve.low_rank import Factors


@dataclass(frozen=True)
class ScheduleLayer:
    """One edited layer: ``keys()`` its keys K (d_in, n) on the current weights;
    ``solve(K, R)`` the factors of ΔW for residuals R (d, n); ``apply(factors)`` writes them."""

    keys: Callable[[], Tensor]
    solve: Callable[[Tensor, Tensor], Factors]
    apply: Callable[[Factors], None]


def spread_over_layers(
    layers: Sequence[ScheduleLayer], output: Callable[[], Tensor], targets: Tensor
) -> list[Factors]:
    """Edit the layers in order; returns the factors written at each.

    Layer i of L writes ``R_i = (Z − H) / (L − i)``: Z the ``targets`` (d, n), H = ``output()``
    the hidden state at the last edited layer on the current weights, at keys read after the
    earlier layers were applied. The last layer writes all that is left.
    """
    written = []
    for i, layer in enumerate(layers):
        K = layer.keys()
        R = (targets - output()) / (len(layers) - i)
        factors = layer.solve(K, R)
        layer.apply(factors)
        written.append(factors)
    return written
