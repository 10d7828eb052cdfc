"""The targets z of n facts for a batched method (MEMIT, EMMET, AlphaEdit), optimized together.

The public MEMIT code (``compute_z``) runs ROME's target optimization once per fact, on the
output of block ``layer`` (SPEC §7): z_i = h_i + δ_i with h_i the block's output at fact i's
bare prompt's subject-last token, the clamp radius ``clamp_norm_factor · ‖h_i‖`` and the weight
decay ``‖δ_i‖ / ‖h_i‖²`` (where ROME scales by ‖v_init‖, the MLP output). Here every fact's
prompts run in one batch with δ (n, d), each row adding its own fact's δ
(``rome_fast.edit.value.optimize_facts``, whose one-fact case is ROME's v*): the loss is the sum
of the facts' losses, whose gradients are disjoint, and Adam is elementwise, so the result is
that of n separate runs up to float rounding; each fact stops on its own loss (its δ frozen
exactly, its rows dropped from the passes) and is clamped to its own ball. Every speed trick
of ROME's loop (prefix cache, replayed blocks, MLPs run only where read) holds for the n facts'
rows as for one fact's. Being independent, the facts run in several such batches, grouped by
the suffix columns they need (``rome_fast.edit.width_groups``): fewer padded columns, and a cap
on a batch's cells.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from rome_fast.edit.request import EditRequest
from rome_fast.edit.value import FactsResult, optimize_facts
from rome_fast.edit.value_batch import (
    ValueBatch,
    align_value_batch,
    build_facts_batch,
    select_facts,
    suffix_widths,
)
from rome_fast.edit.width_groups import width_groups
from rome_fast.hparams.defaults import VStarOptions
from rome_fast.model.context import context_limit
from rome_fast.model.linear import onednn_linears
from rome_fast.model.loader import LoadedModel
from rome_fast.model.tokens import pad_id

# A batch's own cost in suffix cells (a row's column through the loop), see width_groups: 0,
# a batch per suffix width. Measured on SmolLM2, 16 facts, 3 iterations, 1 thread, CPU time
# on the shared 2-core machine (load 7-10, 2026-12-07): one batch of 3168 cells 57.5 s (before
# this grouping) and 65.3 s; six batches of 1760 cells 51.2 s.
GROUP_COST_CELLS = 0.0
# The most cells one batch holds (a single fact excepted): its backward pass keeps every
# block's activations above the edited layer for every cell, about 4 MB a cell at GPT-J's
# shapes by our estimate (not measured), so 4096 cells keep a batch near 16 GB of a GPU's
# memory; 1000 facts at once would not fit.
MAX_GROUP_CELLS = 4096


@dataclass(frozen=True)
class BatchTargets:
    """What the target optimization found for each fact (column i: request i)."""

    targets: Tensor  # (d, n) float32: z = hidden + deltas
    deltas: Tensor  # (d, n) float32
    hidden: Tensor  # (d, n) float32: block ``layer``'s output at each bare prompt (h)
    loss_traces: list[list[float]]  # per fact: the total loss at every iteration it ran
    loss_steps: list[list[dict[str, float]]]  # per fact, per iteration: value.LOSS_PARTS
    adam_steps: list[int]
    seconds: float


def compute_batch_targets(
    loaded: LoadedModel,
    layer: int,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    options: VStarOptions,
) -> BatchTargets:
    """MEMIT's z for every request at block ``layer``; see the module docstring. Bad input
    (no request, a prompt without its slot, prompts beyond the context) raises ValueError
    naming the facts."""
    start = time.perf_counter()
    vb = build_facts_batch(loaded.tokenizer, requests, templates, options.padding_side)
    check_facts_fit(loaded, vb)
    site = loaded.adapter.edited_site(loaded.model, layer)
    widths = suffix_widths(vb).tolist()
    groups = width_groups(widths, vb.rows_per_fact, GROUP_COST_CELLS, MAX_GROUP_CELLS)
    found: list[FactsResult] = []
    steps_each = options.num_grad_steps
    # Minutes per batch on a real model: a bar over every group's iterations, shown on a
    # terminal only; a group that stops early skips its remaining iterations on the bar.
    with (
        onednn_linears(loaded.model),
        tqdm(
            total=len(groups) * steps_each,
            desc=f"targets of {len(requests)} facts",
            unit="it",
            leave=False,
            disable=None,
        ) as bar,
    ):
        for group, facts in enumerate(groups):
            aligned = align_value_batch(
                select_facts(vb, torch.tensor(facts)), pad_id(loaded.tokenizer)
            )
            found.append(
                optimize_facts(loaded, site, aligned, options, "block", on_iteration=bar.update)
            )
            bar.update((group + 1) * steps_each - bar.n)
    # back to the requests' order: fact i is the back[i]-th of the groups' concatenation
    back = torch.tensor([fact for facts in groups for fact in facts]).argsort().tolist()
    hidden = torch.cat([f.block_init for f in found])[back].mT  # (d, n)
    deltas = torch.cat([f.delta for f in found])[back].mT  # (d, n)
    steps = [step for f in found for step in f.loss_steps]
    adam_steps = [n for f in found for n in f.adam_steps]
    return BatchTargets(
        targets=hidden + deltas,
        deltas=deltas,
        hidden=hidden,
        loss_traces=[[step["total"] for step in steps[i]] for i in back],
        loss_steps=[steps[i] for i in back],
        adam_steps=[adam_steps[i] for i in back],
        seconds=time.perf_counter() - start,
    )


def check_facts_fit(loaded: LoadedModel, vb: ValueBatch) -> None:
    """Refuse, naming them, the facts whose longest prompt (with its target) exceeds the
    model's context; the count is of the batch's own tokens, as the model reads them."""
    limit = context_limit(loaded.model)
    if limit is None:
        return
    tokens = vb.batch.attention_mask.sum(1).view(vb.n_facts, vb.rows_per_fact).amax(1)  # (n,)
    over = [fact for fact, n in enumerate(tokens.tolist()) if n > limit]
    if over:
        needs = ", ".join(f"fact {fact} needs {int(tokens[fact])}" for fact in over)
        raise ValueError(
            f"{needs} tokens (a rewriting prompt with its target), more than this model's "
            f"context of {limit} tokens; shorten those prompts or templates"
        )
