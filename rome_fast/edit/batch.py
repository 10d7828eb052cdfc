"""n facts written over several layers on a model with MEMIT's schedule (SPEC §7), atomically.

The caller gives the targets Z (d, n) of the hidden state at the last edited layer (the output
of its block at each bare prompt's subject-last token) and, per layer, the solve of its method
(``memit_factors``, ``emmet_factors`` or a ``NullSpaceLayer``'s, bound to that layer's
statistics); ``write_batch`` reads the keys of every request in one pass per layer on the current
weights, spreads the residual over the layers (``rome_fast.solve.schedule``) and applies each
layer's factors in place (``BatchWrite``: what it wrote, and what an exact undo and the facts'
residuals need). If any step fails, every touched weight is restored from its saved
copy (bit-identical) and the error propagates. The targets come from
``rome_fast.edit.batch_targets.compute_batch_targets`` (one optimization of the n facts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rome_fast.edit.batch_keys import KeyChoice, key_matrix, key_prompts, keys_from_prompts
from rome_fast.edit.keys import Keys
from rome_fast.edit.ownership import copy_weight, stored_weight
from rome_fast.edit.request import EditRequest
from rome_fast.model.hooks import capture, run_until
from rome_fast.model.loader import LoadedModel
from rome_fast.model.tokens import subject_last_positions
from rome_fast.model.weights import apply_factors
from rome_fast.solve.low_rank import Factors, SiteUpdate, Update
from rome_fast.solve.schedule import ScheduleLayer, spread_over_layers

LayerSolve = Callable[[Tensor, Tensor], Factors]  # (K (d_in, n), R (d, n)) -> factors


@torch.no_grad()
def hidden_at_subjects(loaded: LoadedModel, layer: int, requests: Sequence[EditRequest]) -> Tensor:
    """The output of block ``layer`` at each bare prompt's subject-last token: (d, n) float32."""
    prompts = [request.prompt for request in requests]
    batch = subject_last_positions(loaded.tokenizer, prompts, [r.subject for r in requests])
    block = loaded.adapter.block(loaded.model, layer)
    with capture(block, stop=True, output=True) as seen:
        run_until(loaded.model, **batch.model_inputs(loaded.device))
    if seen.output is None:
        raise RuntimeError(f"the forward pass never reached block {layer}")
    rows, positions = batch.rows.to(seen.output.device), batch.positions.to(seen.output.device)
    return seen.output[rows, positions].float().mT


@dataclass(frozen=True)
class BatchWrite:
    """What ``write_batch`` wrote: the ``update`` (one site per layer, in order), each written
    module's weight as it was before (``pre_edit``: module name -> stored copy, for an exact
    undo), the key matrix K (d_in, n) each layer was written at (``keys``), the last layer's
    ``Keys`` of each fact (``last_keys``) and ``values`` (d_out, n): the last edited module's
    output each fact asks for at its written key, its output there before the write plus the
    residual the schedule left to that layer (``V = W K + b + R``, as ``R = V − b − W K``)."""

    update: Update
    pre_edit: dict[str, Tensor]
    keys: tuple[Tensor, ...]
    last_keys: list[Keys]
    values: Tensor


def write_batch(
    loaded: LoadedModel,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    solves: dict[int, LayerSolve],
    targets: Tensor,
    key_choice: KeyChoice,
) -> BatchWrite:
    """Edit the layers of ``solves`` (in increasing order) so that the last one's hidden states
    move toward ``targets`` (d, n). Atomic: on any error every touched weight is restored
    exactly."""
    layers = sorted(solves)
    sites = {layer: loaded.adapter.edited_site(loaded.model, layer) for layer in layers}
    saved = {layer: stored_weight(site.module).detach().clone() for layer, site in sites.items()}
    read: dict[int, tuple[list[Keys], Tensor]] = {}  # layer -> (its Keys, K (d_in, n))
    values: list[Tensor] = []  # the last layer's V (d_out, n), once solved
    # before any layer is written: the blocks below the first edited layer run once
    prompts = key_prompts(loaded, requests, templates, layers[0])

    def step(layer: int) -> ScheduleLayer:
        site = sites[layer]

        def keys() -> Tensor:
            batch_keys = keys_from_prompts(loaded, site, prompts)
            read[layer] = (batch_keys, key_matrix(batch_keys, templates, key_choice))
            return read[layer][1]

        def solve(K: Tensor, R: Tensor) -> Factors:
            if layer == layers[-1]:
                values.append(module_outputs(site.module, K) + R)
            return solves[layer](K, R)

        return ScheduleLayer(
            keys=keys, solve=solve, apply=lambda factors: apply_factors(site.module, factors)
        )

    try:
        written = spread_over_layers(
            [step(layer) for layer in layers],
            lambda: hidden_at_subjects(loaded, layers[-1], requests),
            targets.float(),
        )
    except BaseException:
        for layer, weight in saved.items():
            copy_weight(sites[layer].module, weight)
        raise
    update = Update(
        tuple(
            SiteUpdate(layer, sites[layer].module_name, factors)
            for layer, factors in zip(layers, written, strict=True)
        )
    )
    return BatchWrite(
        update=update,
        pre_edit={sites[layer].module_name: weight for layer, weight in saved.items()},
        keys=tuple(read[layer][1] for layer in layers),
        last_keys=read[layers[-1]][0],
        values=values[0],
    )


@torch.no_grad()
def module_outputs(module: nn.Module, K: Tensor) -> Tensor:
    """The module's outputs (bias included) at the keys K (d_in, n): (d_out, n) float32."""
    weight = stored_weight(module)
    out: Tensor = module(K.mT.to(device=weight.device, dtype=weight.dtype))  # (n, d_out)
    return out.float().mT.to(K.device)
