"""The yardstick of the batched editor: the public MEMIT code's compute flow for the targets.

MEMIT's ``compute_z`` optimizes one δ per fact, each iteration a full forward pass (through the
unembedding, a log-softmax over the vocabulary at every position) of that fact's rewriting and
essence prompts. ``NaiveBatchEditor`` is ``Editor`` with its targets computed that way: per
fact, ``rome_fast.edit.naive.naive_value`` (the public ``compute_v`` loop written out, δ on the
edited layer's MLP output, which every family adds straight into the residual stream, so δ on
the block output as ``compute_z`` adds it). ROME's loss scales the clamp and the weight decay by
‖v_init‖ (the MLP output), MEMIT's by ‖h‖ (the block output): ROME's loop with the clamp
factor times ‖h‖/‖v_init‖ and the weight decay times ‖v_init‖²/‖h‖² is MEMIT's, so
z = h + δ is MEMIT's target (``tests/test_batch_targets.py`` checks that relation on the fast
loops). ‖v_init‖ and h each take one more full forward pass per fact, as the public code reads
its initial values. Keys, statistics, solves and writes are the editor's own: their cost is
not what this yardstick measures.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rome_fast.edit.batch import hidden_at_subjects
from rome_fast.edit.editor import Editor
from rome_fast.edit.naive import module_io_at_subject, naive_value
from rome_fast.edit.request import EditRequest
from rome_fast.hparams.defaults import VStarOptions
from rome_fast.model.loader import LoadedModel


@dataclass(frozen=True)
class NaiveTargets:
    """What the per-fact loops found, in ``batch_targets.BatchTargets``' layout."""

    targets: Tensor  # (d, n) float32: z = h + δ
    hidden: Tensor  # (d, n) float32: h
    loss_traces: list[list[float]]
    loss_steps: list[list[dict[str, float]]]
    adam_steps: list[int]
    seconds: float

    @property
    def deltas(self) -> Tensor:
        return self.targets - self.hidden  # (d, n)


def naive_targets(
    loaded: LoadedModel,
    layer: int,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    options: VStarOptions,
) -> NaiveTargets:
    """MEMIT's z of each request at block ``layer``, one full-forward loop per fact."""
    start = time.perf_counter()
    site = loaded.adapter.edited_site(loaded.model, layer)
    hidden = torch.cat([hidden_at_subjects(loaded, layer, [r]) for r in requests], 1)  # (d, n)
    runs = []
    for request, h in zip(requests, hidden.T, strict=True):
        v_norm = float(
            module_io_at_subject(loaded, site, request.prompt, request.subject)[1].norm()
        )
        h_norm = float(h.norm())
        rescaled = dataclasses.replace(
            options,
            clamp_norm_factor=options.clamp_norm_factor * h_norm / v_norm,
            weight_decay=options.weight_decay * v_norm**2 / h_norm**2,
        )
        runs.append(naive_value(loaded, site, request, templates, rescaled))
    deltas = torch.stack([run.v_star - run.v_init for run in runs], 1)  # (d, n)
    return NaiveTargets(
        targets=hidden + deltas,
        hidden=hidden,
        loss_traces=[run.loss_trace for run in runs],
        loss_steps=[run.loss_steps for run in runs],
        adam_steps=[run.adam_steps for run in runs],
        seconds=time.perf_counter() - start,
    )


class NaiveBatchEditor(Editor):
    """``Editor`` whose ``edit_batch`` computes its targets one fact at a time, as the public
    MEMIT code does; everything else is the editor's."""

    def _batch_targets(
        self, requests: Sequence[EditRequest], templates: list[str], layer: int
    ) -> NaiveTargets:
        return naive_targets(self.loaded, layer, requests, templates, self.hparams.v_star)
