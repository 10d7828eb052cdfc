"""Our float64 reference of one batch on the model as it is now: ``rome_ref.batched``'s closed
forms and schedule, with our keys and targets computed on a float64 copy of the model.

The targets Z come from our n-fact optimization on the float64 copy (``compute_batch_targets``;
it returns them, and the hidden states H the schedule reads, rounded to float32: that rounding
is part of every floor, since the float32 editors measured there carry it too). Per key choice
(``KEY_CHOICES``: the public ½ bare + ½ prefix mean, the template average k*, the bare prompt)
the schedule runs on its own copy: layer i reads its keys after the earlier layers were
written and writes ``(Z − H) / (L − i)`` through the method's closed form with its float64 C.
AlphaEdit's closed form takes Kₚ per layer: in a sequential run, the keys this reference wrote at
that layer for the batches kept before (per key choice: ``Reference.keys``; none: a first edit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from rome_fast.conform.batch_protocol import BatchInputs
from rome_fast.conform.floors import in_dtype
from rome_fast.edit.batch import hidden_at_subjects
from rome_fast.edit.batch_keys import KEY_CHOICES, KeyChoice, compute_batch_keys, key_matrix
from rome_fast.edit.batch_targets import compute_batch_targets
from rome_fast.hparams.batched import MethodHParams
from rome_fast.methods.alphaedit.update import AlphaEditHParams
from rome_fast.methods.emmet.update import EmmetHParams
from rome_fast.model.loader import LoadedModel
from rome_fast.model.weights import weight_matrix
from rome_ref import batched as rb

F64 = NDArray[np.float64]
LayerSolve = Callable[[F64, F64], F64]  # (K (d_in, n), R (d_out, n)) -> ΔW (d_out, d_in)


@dataclass(frozen=True)
class Reference:
    """One key choice's schedule: per edited layer ΔW (d_out, d_in), the keys K (d_in, n) it
    wrote at there and AlphaEdit's Kₚ (d_in, m) it was solved with there (none: a first edit)."""

    deltas: dict[int, F64]
    keys: dict[int, F64]
    preserved: dict[int, F64]

    @property
    def last_keys(self) -> F64:
        """The keys at the last edited layer (d_in, n)."""
        return self.keys[max(self.keys)]


# per key choice, per edited layer: Kₚ (d_in, m), the keys of the earlier batches of a run
EarlierKeys = dict[KeyChoice, dict[int, F64]]


def closed_form(hp: MethodHParams, C: F64, K_p: F64 | None = None) -> LayerSolve:
    """The method's float64 solve at one layer with that layer's C (SPEC §7); ``K_p``:
    AlphaEdit's keys of earlier edits at that layer (None: a first edit)."""
    if isinstance(hp, EmmetHParams):
        return lambda K, R: rb.emmet_delta(
            C, K, R, hp.mom2_update_weight, hp.emmet_lambda, hp.update_norm_lambda
        )
    if isinstance(hp, AlphaEditHParams):
        P = rb.null_space_projector(C, hp.nullspace_threshold)
        return lambda K, R: rb.alphaedit_delta(P, K, R, hp.L2, K_p)
    return lambda K, R: rb.memit_delta(C, K, R, hp.mom2_update_weight)


def _f64(x: torch.Tensor) -> F64:
    return np.asarray(x.detach().to("cpu", torch.float64).numpy(), dtype=np.float64)


def _schedule(
    twin: LoadedModel, inputs: BatchInputs, choice: KeyChoice, Z: F64, K_p: dict[int, F64]
) -> Reference:
    layers = inputs.method.layers
    read: dict[int, F64] = {}

    def step(layer: int) -> rb.ScheduleLayer:
        site = twin.adapter.edited_site(twin.model, layer)
        solve = closed_form(inputs.method, _f64(inputs.C[layer]), K_p.get(layer))

        def keys() -> F64:
            found = compute_batch_keys(twin, site, inputs.requests, inputs.templates)
            read[layer] = _f64(key_matrix(found, inputs.templates, choice))
            return read[layer]

        def apply(delta: F64) -> None:
            with torch.no_grad():
                weight_matrix(site.module).add_(torch.from_numpy(delta))

        return rb.ScheduleLayer(keys, solve, apply)

    deltas = rb.memit_schedule(
        [step(layer) for layer in layers],
        lambda: _f64(hidden_at_subjects(twin, layers[-1], inputs.requests)),
        Z,
    )
    return Reference(dict(zip(layers, deltas, strict=True)), read, K_p)


def references(
    inputs: BatchInputs, earlier: EarlierKeys | None = None
) -> dict[KeyChoice, Reference]:
    """The float64 reference of the batch for every key choice, on the weights as they are;
    ``earlier``: AlphaEdit's Kₚ per key choice and layer (None: a first edit)."""
    twin = in_dtype(inputs.loaded, torch.float64)
    found = compute_batch_targets(
        twin, inputs.method.layers[-1], inputs.requests, inputs.templates, inputs.hparams.v_star
    )
    Z = _f64(found.targets)  # (d, n)
    return {
        # each choice on its own copy: the schedule writes into the weights it reads
        choice: _schedule(
            in_dtype(twin, torch.float64), inputs, choice, Z, (earlier or {}).get(choice, {})
        )
        for choice in KEY_CHOICES
    }
