"""The target value ``v*``: the edited module's output that makes the model say the target.

SPEC §3, reproducing the public code's ``compute_v`` by default. Its quirks, each kept on
purpose and marked ``quirk:`` where it is implemented:

1. a leading space is prepended to the target if it has none (``model.tokens.target_token_ids``:
   leading spaces are dropped and one put back, the rule scoring uses too);
2. the rewriting prompts are each template applied to the request prompt, followed by the
   target's tokens except the last (appended as ids here, never re-tokenized with the text);
3. δ is added to the MLP output of the layer (for every supported family that is exactly
   the edited projection's output, dropout being off in eval) at the subject-last position
   of *every* prompt, the essence prompt included;
4. the NLL of each prompt is its summed target-token NLL divided by the target length, then
   averaged over prompts;
5. KL(p_current ‖ p_initial) of the next-token distribution at the subject-last position of
   the essence prompt ``"{subject} is a"``, the initial distribution taken at δ = 0;
6. the weight decay is ``‖δ‖ / ‖v_init‖²`` (the norm is not squared);
7. the loop runs ``v_num_grad_steps`` iterations and the last one only evaluates (at most
   ``v_num_grad_steps − 1`` Adam steps); it stops early once the loss is below 5e-2;
8. after each step δ is projected into the ball of radius ``clamp_norm_factor · ‖v_init‖``;
9. ``v_init`` is the module output at the subject-last token of the bare prompt, read in the
   first forward pass (public code: row 0 of the batch, whose template is ``"{}"``).

``v* = v_init + δ`` is the desired *module output* (bias included); the update subtracts the
bias itself. Nothing here is random: given the templates, ``v*`` is deterministic.

One loop for one fact or many (``optimize_facts``; the prompts: ``rome_fast.edit.value_batch``):
δ is (n, d), every row of fact i's prompts adds δ_i, and each of quirks 4–8 holds per fact
(its own NLL, KL, weight decay, clamp ball, early stop; a stopped fact's δ is frozen exactly).
The loss minimized is the sum of the facts' losses: no row reads another fact's δ, so the
gradients are disjoint and Adam, elementwise, makes it n separate runs. ROME's v* is the
one-fact case scaled by ‖v_init‖; MEMIT's z (``rome_fast.edit.batch_targets``) scales by the
block output ‖h‖ instead.

Speed, without changing the result beyond float rounding: no token before a prompt's
subject-last token depends on δ (attention is causal), so the prompts are laid out with
every subject-last token in one column (``rome_fast.edit.prefix``), the columns before it run
once without gradients into a KV cache, and each iteration runs only the columns from the
subject-last token on; logits are computed only where the loss reads them; the initial
distribution of the KL is the first iteration's (δ = 0), never recomputed. Nothing at or
below the edited layer depends on δ either: one clean pass over the suffix columns, stopped
after that layer's block, records the block's output, and every iteration replays it with δ
added (``rome_fast.model.hooks.replay_blocks``) and runs only the blocks above. That is exact
because every supported family adds the MLP output straight into the residual stream, so δ
on the MLP output is δ on the block output. The MLPs above run only where their output is
read (``rome_fast.model.hooks.only_at``): in the top block at the positions the loss reads, below
it up to each row's last read column (the essence prompt's first suffix column only).
Grouped-query attention runs without copies of the key/value heads on the CPU
(``rome_fast.model.attention``), and float32 linear layers through oneDNN where that is the faster
CPU kernel (``rome_fast.model.linear``). The layout makes padding irrelevant here:
``options.padding_side`` changes nothing in ``v*``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel

from rome_fast.edit.prefix import PrefixCache
from rome_fast.edit.request import EditRequest
from rome_fast.edit.value_batch import ValueBatch, align_value_batch, fact_rows, select_facts
from rome_fast.edit.value_batch import build_value_batch as build_value_batch
from rome_fast.hparams.defaults import VStarOptions
from rome_fast.model.attention import grouped_kv_attention
from rome_fast.model.hooks import capture, only_at, replay_blocks, run_until
from rome_fast.model.linear import onednn_linears
from rome_fast.model.loader import LoadedModel
from rome_fast.model.precision import loop_precision
from rome_fast.model.site import EditedSite
from rome_fast.model.tokens import pad_id


def readout_logits(
    model: nn.Module, inputs: dict[str, Any], rows: Tensor, positions: Tensor
) -> Tensor:
    """Next-token logits at ``(rows[i], positions[i])`` of the input columns only: (N, V) float32.

    The unembedding is applied to the gathered final hidden states, not to every position.
    """
    return unembed(model, final_hidden(model, inputs, rows, positions))


def final_hidden(
    model: nn.Module, inputs: dict[str, Any], rows: Tensor, positions: Tensor
) -> Tensor:
    """The final hidden states (final norm applied) at ``(rows[i], positions[i])``: (N, d)."""
    hidden = cast(PreTrainedModel, model).base_model(**inputs).last_hidden_state  # (B, T, d)
    picked: Tensor = hidden[rows.to(hidden.device), positions.to(hidden.device)]
    return picked


def unembed(model: nn.Module, hidden: Tensor) -> Tensor:
    """The logits of final hidden states (N, d): (N, V) float32."""
    unembedding = cast(PreTrainedModel, model).get_output_embeddings()
    assert unembedding is not None, "the model has no output embeddings"
    logits: Tensor = unembedding(hidden)  # (N, vocab)
    return logits.float()


@dataclass(frozen=True)
class LossTerms:
    """Each fact's loss terms: (n_facts,) each. The facts' rows never meet (attention stays
    inside a row), so fact i's terms depend on δ_i only and the gradient of their sum is each
    fact's own: with Adam elementwise, one optimization of the sum is n separate ones."""

    nll: Tensor
    kl: Tensor
    weight_decay: Tensor

    @property
    def total(self) -> Tensor:
        return self.nll + self.kl + self.weight_decay


# The parts of one iteration's loss, as recorded per step: each term as it enters the total
# (the KL and the weight decay already multiplied by kl_factor and v_weight_decay), and ‖δ‖
# at which the loss was evaluated (before that iteration's Adam step).
LOSS_PARTS = ("nll", "kl", "weight_decay", "total", "delta_norm")


def loss_steps(terms: LossTerms, delta: Tensor) -> list[dict[str, float]]:
    """One iteration's parts (``LOSS_PARTS``) per fact, read with one host synchronization."""
    parts = torch.stack(
        [
            terms.nll,
            terms.kl,
            terms.weight_decay,
            terms.total,
            torch.linalg.vector_norm(delta, dim=-1),
        ]
    )  # (len(LOSS_PARTS), n_facts)
    return [dict(zip(LOSS_PARTS, fact, strict=True)) for fact in parts.detach().float().T.tolist()]


def rewriting_nll(picked: Tensor, vb: ValueBatch) -> Tensor:
    """Per fact, the mean over its prompts of (summed target-token NLL / target length)
    (quirk 4): (n_facts,).

    ``picked`` (n_reads,): each read's log-probability of its target token, in the order of
    ``vb.target_rows``; the reads are laid into a (prompt, target token) grid padded with
    zeros to the longest target.
    """
    longest = int(vb.target_lengths.max())
    grid = picked.new_zeros(vb.n_facts * vb.n_prompts * longest)
    grid = grid.index_put((vb.read_slots.to(grid.device),), picked)
    lengths = vb.target_lengths.repeat_interleave(vb.n_prompts).to(grid)  # (n_facts·n_prompts,)
    per_prompt = -grid.view(-1, longest).sum(1) / lengths
    return per_prompt.view(vb.n_facts, vb.n_prompts).mean(1)


def essence_kl(log_probs: Tensor, initial_log_probs: Tensor) -> Tensor:
    """KL(p_current ‖ p_initial) of each fact's essence prompt (quirk 5): (n_facts,)."""
    kl = F.kl_div(initial_log_probs, log_probs, log_target=True, reduction="none")  # (n, V)
    return kl.sum(-1)


def weight_decay(delta: Tensor, scale: Tensor) -> Tensor:
    """‖δ_i‖ / ‖scale_i‖² per fact, unsquared as in the public code (quirk 6): (n_facts,).

    ``scale`` (n_facts, d): v_init for ROME, the block output h for MEMIT's z."""
    decay: Tensor = (
        torch.linalg.vector_norm(delta, dim=-1) / torch.linalg.vector_norm(scale, dim=-1) ** 2
    )
    return decay


def clamp_to_ball(delta: Tensor, radius: Tensor) -> None:
    """Project each fact's δ (a row) into its ball of ``radius`` (n_facts,) in place (quirk 8).

    The scale is computed on δ's device (no host synchronization); inside the ball it is
    exactly 1, so δ is untouched there. It is the radius times 1/‖δ‖: that is how torch
    evaluates a Python float over a tensor, as this loop did for one fact, and ROME's v* stays
    bit-identical to that loop's.
    """
    with torch.no_grad():
        inverse_norms = torch.linalg.vector_norm(delta, dim=-1, keepdim=True).reciprocal()
        delta.mul_((radius[:, None] * inverse_norms).clamp(max=1.0))  # (n_facts, 1) scales


@dataclass(frozen=True)
class ValueResult:
    v_star: Tensor  # (d_out,) float32: desired module output, bias included
    v_init: Tensor  # (d_out,) float32: module output at the bare prompt
    delta: Tensor  # (d_out,) float32
    loss_trace: list[float]  # total loss at every iteration, the final evaluation included
    adam_steps: int
    keys: Tensor  # (n_templates, d_in) float32: the edited module's input at each subject-last
    loss_steps: list[dict[str, float]]  # per iteration: LOSS_PARTS


@dataclass(frozen=True)
class FactsResult:
    """What the loop found for each of n facts (rows in the batch's fact order)."""

    module_init: Tensor  # (n, d_out) float32: the edited module's output at each bare prompt
    block_init: Tensor  # (n, d_model) float32: the edited layer's block output there (h)
    delta: Tensor  # (n, d_out) float32
    keys: Tensor  # (n, n_templates, d_in) float32: the edited module's input at each subject-last
    loss_steps: list[list[dict[str, float]]]  # per fact, per iteration it ran: LOSS_PARTS
    adam_steps: list[int]

    @property
    def loss_traces(self) -> list[list[float]]:
        return [[step["total"] for step in steps] for steps in self.loss_steps]


# Which vector's norm scales a fact's clamp radius and weight decay: ROME's v_init (the edited
# module's output), or MEMIT's h (the block output the target z is written as; SPEC §7).
ScaleBy = Literal["module", "block"]


@dataclass(frozen=True)
class CleanPass:
    """The suffix columns run once at δ = 0 through the edited layer's block."""

    module_input: Tensor  # (B, W - split, d_in): the edited module's input
    module_output: Tensor  # (B, W - split, d_out)
    block_output: Tensor  # (B, W - split, d_model): what the blocks above read
    block_is_tuple: bool  # the block returned (hidden, ...)


def read_mlp_positions(
    read_rows: Tensor, read_positions: Tensor, n_rows: int, width: int
) -> tuple[Tensor, Tensor]:
    """Flattened (row · width + column) positions whose MLP output the loss depends on:
    ``(below the top block, in the top block)``, sorted.

    Attention is causal, so nothing after a row's last read column matters; in the top block
    only the read positions themselves reach the unembedding.
    """
    last = torch.full((n_rows,), -1).scatter_reduce(0, read_rows, read_positions, "amax")
    below = (torch.arange(width)[None, :] <= last[:, None]).flatten().nonzero().squeeze(1)
    top = (read_rows * width + read_positions).unique()  # sorted, each position once
    return below, top


@torch.no_grad()
def clean_suffix_pass(loaded: LoadedModel, site: EditedSite, prefix: PrefixCache) -> CleanPass:
    """One pass over the suffix columns, stopped after the edited block: every iteration of
    the loop replays that block's output with δ added, so the blocks up to it never rerun."""
    model = loaded.model
    block = loaded.adapter.block(model, site.layer)
    with (
        capture(site.module, output=True) as seen,
        capture(block, output=True, stop=True) as block_seen,
    ):
        run_until(cast(PreTrainedModel, model).base_model, **prefix.suffix_inputs())
    assert seen.input is not None
    assert seen.output is not None
    assert block_seen.output is not None
    return CleanPass(seen.input, seen.output, block_seen.output, block_seen.output_is_tuple)


def compute_v_star(
    loaded: LoadedModel,
    site: EditedSite,
    request: EditRequest,
    templates: Sequence[str],
    options: VStarOptions,
) -> ValueResult:
    """Optimize δ at the edited module's output; see the module docstring. ROME's v* is the
    one-fact case of :func:`optimize_facts`, scaled by ‖v_init‖."""
    vb = align_value_batch(
        build_value_batch(loaded.tokenizer, request, templates, options.padding_side),
        pad_id(loaded.tokenizer),
    )
    with onednn_linears(loaded.model):
        found = optimize_facts(loaded, site, vb, options, scale_by="module")
    v_init, delta = found.module_init[0], found.delta[0]
    return ValueResult(
        v_star=v_init + delta,
        v_init=v_init,
        delta=delta,
        loss_trace=found.loss_traces[0],
        adam_steps=found.adam_steps[0],
        keys=found.keys[0],
        loss_steps=found.loss_steps[0],
    )


# The read-out (unembedding, log-softmax and their backward) runs per group of whole facts
# whose float32 logits fit in this many bytes, as one fact's would: n facts' (reads, V)
# tensors at once leave the cache (measured on tiny GPT-2, 16 facts: each of those operations
# 2.4× (log-softmax) to 3.5× (its backward) slower per element than fact by fact).
READOUT_GROUP_BYTES = 8 << 20


@dataclass(frozen=True)
class _ReadGroup:
    """Consecutive facts read out together: their target reads, then their essence prompts."""

    read_ids: Tensor  # (n_target_reads,) the target token each target read predicts
    n_facts: int

    @property
    def size(self) -> int:
        return int(self.read_ids.numel()) + self.n_facts


@dataclass(frozen=True)
class _Reads:
    """Where the loss reads the logits, in suffix columns, and the MLP positions it needs."""

    rows: Tensor  # (n_reads + n_facts,): group by group, its target reads, then its essences
    positions: Tensor  # (n_reads + n_facts,)
    groups: list[_ReadGroup]
    keep: dict[nn.Module, Tensor]  # per MLP above the edited layer, for only_at


def _fact_groups(vb: ValueBatch, vocab: int) -> list[range]:
    """Consecutive facts, as many per group as fit ``READOUT_GROUP_BYTES`` (at least one)."""
    reads = (vb.target_lengths * vb.n_prompts + 1).tolist()  # per fact, its essence included
    groups: list[range] = []
    start, size = 0, 0
    for fact, n in enumerate(reads):
        if fact > start and (size + n) * vocab * 4 > READOUT_GROUP_BYTES:
            groups.append(range(start, fact))
            start, size = fact, 0
        size += n
    return [*groups, range(start, vb.n_facts)]


def _reads(vb: ValueBatch, split: int, mlps: Sequence[nn.Module], layer: int, vocab: int) -> _Reads:
    # where each fact's target reads start (fact-major), and where the last one's end
    starts = [0, *(vb.target_lengths * vb.n_prompts).cumsum(0).tolist()]
    rows, positions, groups = [], [], []
    for facts in _fact_groups(vb, vocab):
        first, last = starts[facts.start], starts[facts.stop]  # the group's target reads
        essences = vb.essence_rows[facts.start : facts.stop]
        rows += [vb.target_rows[first:last], essences]
        positions += [vb.target_positions[first:last], vb.batch.positions[essences]]
        groups.append(_ReadGroup(vb.read_ids[first:last], len(facts)))
    read_rows, read_positions = torch.cat(rows), torch.cat(positions) - split  # suffix columns
    n_rows, width = vb.batch.input_ids.shape
    below, top = read_mlp_positions(read_rows, read_positions, n_rows, width - split)
    # the MLPs above the edited layer run only where the loss depends on their output
    keep = dict.fromkeys(mlps[layer + 1 : -1], below)
    keep |= dict.fromkeys(mlps[layer + 1 :][-1:], top)
    return _Reads(read_rows, read_positions, groups, keep)


def _read_out(model: nn.Module, hidden: Tensor, groups: list[_ReadGroup]) -> tuple[Tensor, Tensor]:
    """``(picked, essence)``: each target read's log-probability of its token (n_reads,) and
    the essence prompts' log-probabilities (n_facts, V), from the final hidden states (in the
    order of ``_Reads.rows``), group by group."""
    picked, essence = [], []
    # Split, not sliced: the backward of a slice fills a zero gradient the size of the whole.
    for part, group in zip(hidden.split([g.size for g in groups]), groups, strict=True):
        n_targets = int(group.read_ids.numel())
        target_logits, essence_logits = unembed(model, part).split([n_targets, group.n_facts])
        log_probs = torch.log_softmax(target_logits, dim=-1)  # (n_targets, V)
        picked.append(log_probs.gather(-1, group.read_ids[:, None].to(part.device))[:, 0])
        essence.append(torch.log_softmax(essence_logits, dim=-1))
    return torch.cat(picked), torch.cat(essence)


@dataclass(frozen=True)
class _Running:
    """The loop's batch cut to the facts still optimized (a stopped fact's rows run no more):
    their rows of the batch, of the prefix cache and of the clean pass, and their reads."""

    facts: Tensor  # (m,) ascending indices into the whole batch's facts
    vb: ValueBatch  # their rows, the same columns
    prefix: PrefixCache
    clean_block: Tensor  # (m · rows_per_fact, W - split, d_model)
    reads: _Reads

    def forward(self, loop: _Loop, blocks: nn.ModuleList, delta: Tensor) -> tuple[Tensor, Tensor]:
        """``(picked, essence)`` of ``_read_out`` with each row's fact's δ (m, d) added at its
        subject-last token, column 0 of the suffix."""
        device = self.clean_block.device
        rows = self.vb.batch.rows.to(device)
        delta_index = (rows, torch.zeros_like(rows))
        # δ on the MLP output is δ on the block output: every family adds the MLP output
        # straight into the residual stream (quirk 3). Each row gets its own fact's δ.
        per_row = delta[:, None].expand(-1, self.vb.rows_per_fact, -1).reshape(-1, delta.shape[1])
        shifted = self.clean_block[delta_index] + per_row.to(self.clean_block.dtype)
        edited_block = self.clean_block.index_put(delta_index, shifted)
        with (
            replay_blocks(blocks, loop.layer, edited_block, as_tuple=loop.block_is_tuple),
            only_at(self.reads.keep, device),
        ):
            inputs = self.prefix.suffix_inputs()
            read_rows, read_positions = self.reads.rows.to(device), self.reads.positions.to(device)
            hidden = final_hidden(loop.model, inputs, read_rows, read_positions)
            return _read_out(loop.model, hidden, self.reads.groups)


@dataclass(frozen=True)
class _Loop:
    """What every iteration reads, whichever facts still run."""

    model: nn.Module
    vb: ValueBatch
    prefix: PrefixCache
    clean: CleanPass
    mlps: Sequence[nn.Module]
    layer: int

    def running(self, facts: Tensor) -> _Running:
        """The batch of ``facts`` (m,) only: sliced, nothing recomputed."""
        rows = fact_rows(facts, self.vb.rows_per_fact)
        selected = select_facts(self.vb, facts)
        block_output = self.clean.block_output
        vocab = int(cast(PreTrainedModel, self.model).config.vocab_size)  # sizes read groups
        return _Running(
            facts,
            selected,
            self.prefix.select_rows(rows),
            block_output[rows.to(block_output.device)],
            _reads(selected, self.prefix.split, self.mlps, self.layer, vocab),
        )

    @property
    def block_is_tuple(self) -> bool:
        return self.clean.block_is_tuple


def optimize_facts(
    loaded: LoadedModel,
    site: EditedSite,
    vb: ValueBatch,
    options: VStarOptions,
    scale_by: ScaleBy,
    on_iteration: Callable[[], object] | None = None,
) -> FactsResult:
    """One optimization of every fact's δ (a row of δ (n, d)) on the aligned batch ``vb``:
    the loss is the sum of the facts' losses, each fact stops on its own loss (its δ frozen
    exactly from then on) and is clamped to its own ball. ``on_iteration`` is called after
    each iteration's forward pass (a progress bar's tick)."""
    model = loaded.model
    device = loaded.device
    mlps = [loaded.adapter.mlp(model, i) for i in range(loaded.adapter.n_layers(model))]
    prefix = PrefixCache(model, vb.batch, device, mlps)  # columns before the subject-last tokens
    clean = clean_suffix_pass(loaded, site, prefix)
    bare_rows = vb.bare_rows.to(device)
    module_init = clean.module_output[bare_rows, 0].float()  # (n, d_out), quirk 9
    block_init = clean.block_output[bare_rows, 0].float()  # (n, d_model): h
    # The keys come free: a rewriting prompt up to its subject-last token is the key prompt.
    keys = clean.module_input[:, 0].float().view(vb.n_facts, vb.rows_per_fact, -1)
    scale = block_init if scale_by == "block" else module_init  # (n, d)
    # the product in float64 as the public code's Python float, then float32 as it is used
    radius = (options.clamp_norm_factor * torch.linalg.vector_norm(scale, dim=-1).double()).float()

    delta = torch.zeros_like(module_init, requires_grad=True)  # (n, d_out) float32
    optimizer = torch.optim.Adam([delta], lr=options.lr)
    initial_kl: Tensor | None = None
    records: list[list[dict[str, float]]] = [[] for _ in range(vb.n_facts)]
    steps = [0] * vb.n_facts
    running = torch.ones(vb.n_facts, dtype=torch.bool)  # facts still optimized
    loop = _Loop(model, vb, prefix, clean, mlps, site.layer)
    active = loop.running(torch.arange(vb.n_facts))
    blocks = loaded.adapter.layers(model)
    with (
        loop_precision(options.precision, device) as forward_precision,
        grouped_kv_attention(model, device),
    ):
        for iteration in range(options.num_grad_steps):  # quirk 7
            if active.facts.numel() != int(running.sum()):  # a fact stopped: drop its rows
                facts = running.nonzero().squeeze(1)
                active = loop.running(facts)
            facts_here = active.facts.to(device)
            own = delta[facts_here]  # (m, d_out): the running facts' δ
            with forward_precision():
                picked, essence = active.forward(loop, blocks, own)
            if initial_kl is None:  # the first pass has δ = 0, every fact running
                initial_kl = essence.detach()
            terms = LossTerms(
                nll=rewriting_nll(picked, active.vb),
                kl=options.kl_factor * essence_kl(essence, initial_kl[facts_here]),
                weight_decay=options.weight_decay * weight_decay(own, scale[facts_here]),
            )
            # The one host synchronization per iteration: the trace and the early-stop decision.
            last = iteration == options.num_grad_steps - 1
            for fact, step in zip(active.facts.tolist(), loss_steps(terms, own), strict=True):
                records[fact].append(step)
                running[fact] = not (step["total"] < options.early_stop_loss or last)
            if on_iteration is not None:
                on_iteration()
            if not bool(running.any()):
                break
            optimizer.zero_grad()
            # grads of δ only, never the model's
            (delta.grad,) = torch.autograd.grad(terms.total.sum(), [delta])
            before = delta.detach().clone()
            optimizer.step()
            clamp_to_ball(delta, radius)
            with torch.no_grad():  # a stopped fact's δ stays exactly where it stopped
                delta.copy_(torch.where(running[:, None].to(device), delta, before))
            steps = [n + int(on) for n, on in zip(steps, running.tolist(), strict=True)]
    return FactsResult(
        module_init=module_init,
        block_init=block_init,
        delta=delta.detach().clone(),
        keys=keys[:, : vb.n_prompts],
        loss_steps=records,
        adam_steps=steps,
    )
