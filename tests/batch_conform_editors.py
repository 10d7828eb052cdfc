"""Batched editors for the batched conformance tests, as ``module:callable`` editors a user could
write (``--editor tests.batch_conform_editors:NAME --batch N``): ``plain_memit``, a correct MEMIT
written plainly here (the closed form ``ΔW = R Kᵀ (λC + KKᵀ)⁻¹`` by a dense float64 solve, the
schedule as a loop; only the keys and the targets' optimization are the package's steps), and
planted bugs, each that editor with one thing wrong."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rome_fast.conform.batch_protocol import BatchInputs
from rome_fast.edit.batch import hidden_at_subjects
from rome_fast.edit.batch_keys import compute_batch_keys, key_matrix
from rome_fast.edit.batch_targets import compute_batch_targets
from rome_fast.methods.memit.update import MemitHParams

SEED = 0  # the extra rank-one term's random directions
HANG_SECONDS = 10.0  # how long ``hangs`` waits: far past the 0.5 s limit its test sets
Fault = Callable[[Tensor], Tensor]  # what a planted bug does to a layer's ΔW (d_out, d_in)


def _keys(inputs: BatchInputs, layer: int) -> Tensor:
    """The public keys K (d_in, n) at ``layer`` on the current weights."""
    site = inputs.loaded.adapter.edited_site(inputs.loaded.model, layer)
    found = compute_batch_keys(inputs.loaded, site, inputs.requests, inputs.templates)
    return key_matrix(found, inputs.templates, "memit")


def _solve(C: Tensor, K: Tensor, R: Tensor, lam: float) -> Tensor:
    """``R Kᵀ (λC + KKᵀ)⁻¹`` (d_out, d_in) by a dense float64 solve of the transposed system."""
    K64, R64 = K.double(), R.double()
    A = lam * C.double() + K64 @ K64.T  # (d_in, d_in), symmetric
    delta: Tensor = torch.linalg.solve(A, K64 @ R64.T).T
    return delta


@dataclass
class PlainMemit:
    """MEMIT over ``inputs.method.layers``; each knob plants one bug (all off: correct)."""

    name: str = "plain-memit"
    spread: bool = True  # False: every layer writes the whole residual Z − H
    keys_from_first_layer: bool = False  # every layer's keys read at the first edited layer
    fault: Fault = field(default=lambda delta: delta)
    stale_weights: bool = False  # W0 cached at the first call and written over afterwards
    first_fact_weight: float = 1.0  # ≠ 1: the first request's residual scaled (order-dependent)
    uncontrolled: list[str] = field(default_factory=list)
    _cached: dict[int, Tensor] = field(default_factory=dict, repr=False)

    def edit(self, inputs: BatchInputs) -> None:
        hp = inputs.method
        assert isinstance(hp, MemitHParams), "plain-memit runs MEMIT only"
        loaded, layers = inputs.loaded, hp.layers
        Z = compute_batch_targets(
            loaded, layers[-1], inputs.requests, inputs.templates, inputs.hparams.v_star
        ).targets  # (d, n)
        for i, layer in enumerate(layers):
            K = _keys(inputs, layers[0] if self.keys_from_first_layer else layer)
            R = Z - hidden_at_subjects(loaded, layers[-1], inputs.requests)
            if self.spread:
                R = R / (len(layers) - i)
            R[:, 0] *= self.first_fact_weight
            delta = self.fault(_solve(inputs.C[layer], K, R, hp.mom2_update_weight))
            self._write(inputs, layer, delta)

    def _write(self, inputs: BatchInputs, layer: int, delta: Tensor) -> None:
        W = inputs.loaded.adapter.edited_site(inputs.loaded.model, layer).weight
        base = self._cached.setdefault(layer, W.detach().clone()) if self.stale_weights else W
        with torch.no_grad():
            W.copy_((base.double() + delta).to(W.dtype))


def plain_memit() -> PlainMemit:
    return PlainMemit()


def residual_not_spread() -> PlainMemit:
    return PlainMemit("residual-not-spread", spread=False)


def wrong_layer_keys() -> PlainMemit:
    return PlainMemit("wrong-layer-keys", keys_from_first_layer=True)


def stale_weights() -> PlainMemit:
    return PlainMemit("stale-w0", stale_weights=True)


def scaled_update() -> PlainMemit:
    return PlainMemit("scaled-0.995", fault=lambda delta: 0.995 * delta)


def bf16_update() -> PlainMemit:
    return PlainMemit("bf16-update", fault=lambda delta: delta.bfloat16().double())


def _plus_rank_one(delta: Tensor) -> Tensor:
    """ΔW plus a seeded random rank-one term at 1e-4 of ‖ΔW‖ (beyond the n facts' span)."""
    g = torch.Generator().manual_seed(SEED)
    u = torch.randn(delta.shape[0], 1, generator=g, dtype=delta.dtype)
    v = torch.randn(1, delta.shape[1], generator=g, dtype=delta.dtype)
    term = u @ v  # (d_out, d_in)
    scaled: Tensor = 1e-4 * delta.norm() / term.norm() * term
    return delta + scaled


def extra_rank() -> PlainMemit:
    return PlainMemit("extra-rank", fault=_plus_rank_one)


def first_fact_favoured() -> PlainMemit:
    return PlainMemit("first-fact-favoured", first_fact_weight=1.01)


PLANTED: dict[str, tuple[Callable[[], PlainMemit], str]] = {
    # editor -> (its factory, the property that targets it)
    "residual-not-spread": (residual_not_spread, "matches_reference"),
    "wrong-layer-keys": (wrong_layer_keys, "matches_reference"),
    "stale-w0": (stale_weights, "matches_reference"),
    "scaled-0.995": (scaled_update, "matches_reference"),
    "bf16-update": (bf16_update, "matches_reference"),
    "first-fact-favoured": (first_fact_favoured, "order_invariant"),
    "extra-rank": (extra_rank, "rank_per_layer"),
}


def raises_midway(inputs: BatchInputs) -> None:
    """Writes the batch, then raises (the harness must put the model back)."""
    PlainMemit().edit(inputs)
    raise RuntimeError("planted failure after the first write")


def training_mode(inputs: BatchInputs) -> None:
    """A correct batch that leaves the model in training mode."""
    PlainMemit().edit(inputs)
    inputs.loaded.model.train()


def hangs(_inputs: BatchInputs) -> None:
    """Never returns within the tests' time limit (and writes nothing)."""
    threading.Event().wait(HANG_SECONDS)


def touches_embedding(inputs: BatchInputs) -> None:
    """A correct batch that also nudges a parameter outside the edited layers."""
    PlainMemit().edit(inputs)
    first = next(inputs.loaded.model.parameters())
    with torch.no_grad():
        first.view(-1)[0] += 1e-3


# for `rome conform --editor tests.batch_conform_editors:scaled` (one process, one instance)
scaled = scaled_update()
