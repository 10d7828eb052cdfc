"""The floor of each numeric batched property on one batch: the value a correct float32 editor
reaches there, against the float64 reference of the same batch (``batch_reference``).

The correct float32 editor is ours (``Editor.edit_batch``, float32 weights, float64 solves),
at each key choice, on the model as it is now, then reverted exactly. So the floor holds the
float32 rounding of the keys, of the targets' optimization (Adam steps in float32 against the
float64 copy's), of the weight write and of the later layers' keys read after it, and the
conditioning of each layer's system. The order floor is ours in reverse order against ours.
In a sequential AlphaEdit run our editor's Kₚ holds the keys of its own floor edits of the
batches kept before, at the same key choice (``OurEarlier``), as the reference's holds its own.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from rome_fast.conform.batch_properties import (
    NUMERIC,
    PRESERVES,
    RESIDUALS,
    earlier_misfit,
    key_residual,
    layer_misfit,
    rank_excess,
)
from rome_fast.conform.batch_protocol import BatchInputs, our_batch_editor_for
from rome_fast.conform.batch_reference import F64, Reference
from rome_fast.edit.batch_keys import KEY_CHOICES, KeyChoice
from rome_fast.edit.batch_result import BatchResult
from rome_fast.edit.request import EditRequest
from rome_fast.model.loader import LoadedModel

# A floor below float32's resolution would make a bound that rounding alone exceeds.
EPS32 = float(np.finfo(np.float32).eps)
# per key choice: our floor edits of the batches kept before (their keys are AlphaEdit's Kₚ)
OurEarlier = dict[KeyChoice, list[BatchResult]]


def layer_weights(loaded: LoadedModel, layers: tuple[int, ...]) -> dict[int, Tensor]:
    """Copies of the edited layers' weights as (d_out, d_in)."""
    return {
        layer: loaded.adapter.edited_site(loaded.model, layer).weight.detach().clone()
        for layer in layers
    }


def layer_deltas(loaded: LoadedModel, before: dict[int, Tensor]) -> dict[int, F64]:
    """W − W_before per layer of ``before`` (float64, (d_out, d_in))."""
    now = layer_weights(loaded, tuple(before))
    return {layer: (now[layer].double() - before[layer].double()).cpu().numpy() for layer in before}


def our_deltas(
    inputs: BatchInputs,
    choice: KeyChoice,
    requests: list[EditRequest],
    earlier: list[BatchResult] | None = None,
) -> tuple[dict[int, F64], BatchResult]:
    """ΔW per layer of our float32 editor at ``choice`` (after ``earlier``: AlphaEdit's Kₚ),
    and its result; the model is left as it was."""
    before = layer_weights(inputs.loaded, inputs.method.layers)
    editor = our_batch_editor_for(inputs, earlier or ())
    result = editor.edit_batch(
        requests, inputs.method_name, keys=choice, method_hparams=inputs.method
    )
    deltas = layer_deltas(inputs.loaded, before)
    editor.revert(result)
    return deltas, result


def order_difference(forward: dict[int, F64], backward: dict[int, F64]) -> float:
    """The worst layer's ‖ΔW_rev − ΔW‖_F / ‖ΔW‖_F."""
    return layer_misfit(backward, forward)


def measured_floors(
    inputs: BatchInputs, refs: dict[KeyChoice, Reference], earlier: OurEarlier | None = None
) -> tuple[dict[str, float], dict[KeyChoice, BatchResult]]:
    """Per numeric property, the largest value our float32 editor reaches on this batch (over
    the key choices, each property at the choice where it is required; after ``earlier``), and
    its edit at each choice."""
    seen: dict[str, list[float]] = {name: [EPS32] for name in NUMERIC}
    requests = list(inputs.requests)
    results: dict[KeyChoice, BatchResult] = {}
    for choice in KEY_CHOICES:
        before = (earlier or {}).get(choice)
        deltas, results[choice] = our_deltas(inputs, choice, requests, before)
        seen["rank_per_layer"].append(rank_excess(deltas, len(requests)))
        seen[RESIDUALS[choice]].append(key_residual(deltas, refs[choice]))
        seen["matches_reference"].append(layer_misfit(deltas, refs[choice].deltas))
        seen[PRESERVES].append(earlier_misfit(deltas, refs[choice]))
        if choice == KEY_CHOICES[-1]:
            backward, _ = our_deltas(inputs, choice, requests[::-1], before)
            seen["order_invariant"].append(order_difference(deltas, backward))
    # fmax: NaN (no Kₚ, preserves_earlier not measured) leaves the floor at EPS32
    return {name: float(np.fmax.reduce(values)) for name, values in seen.items()}, results
