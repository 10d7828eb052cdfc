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

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rome_fast.edit.keys import bare_template_index
from rome_fast.edit.prefix import PrefixCache, align_subject_last
from rome_fast.edit.request import EditRequest
from rome_fast.hparams.defaults import VStarOptions
from rome_fast.model.attention import grouped_kv_attention
from rome_fast.model.hooks import capture, only_at, replay_blocks, run_until
from rome_fast.model.linear import onednn_linears
from rome_fast.model.loader import LoadedModel
from rome_fast.model.precision import loop_precision
from rome_fast.model.site import EditedSite
from rome_fast.model.tokens import (
    PromptBatch,
    apply_template,
    pad_id,
    subject_last_index,
    subject_last_positions,
    target_token_ids,
)

ESSENCE_PROMPT = "{} is a"


@dataclass(frozen=True)
class ValueBatch:
    """The prompts of the target optimization of one or more facts and the positions the loss
    reads. Rows are fact-major: fact i's ``n_prompts`` rewriting prompts (template order), then
    its essence prompt. The one-fact accessors (``target_ids``, ``essence_row``, ...) are
    ROME's."""

    batch: PromptBatch  # n_facts * (n_prompts + 1) rows
    n_prompts: int  # rewriting prompts per fact: one per template
    targets: tuple[Tensor, ...]  # per fact (n_target_i,): the target's ids
    target_rows: Tensor  # (n_reads,) fact-major, each prompt's target tokens in order
    target_positions: Tensor  # (n_reads,): logits there predict read_ids
    read_ids: Tensor  # (n_reads,)
    read_slots: Tensor  # (n_reads,): (prompt · longest target + token) in the NLL's grid
    bare_index: int  # the template index of the bare template "{}"

    @property
    def n_facts(self) -> int:
        return len(self.targets)

    @property
    def rows_per_fact(self) -> int:
        return self.n_prompts + 1

    @property
    def essence_rows(self) -> Tensor:
        return torch.arange(self.n_facts) * self.rows_per_fact + self.n_prompts  # (n_facts,)

    @property
    def bare_rows(self) -> Tensor:
        return torch.arange(self.n_facts) * self.rows_per_fact + self.bare_index  # (n_facts,)

    @property
    def target_lengths(self) -> Tensor:
        return torch.tensor([t.numel() for t in self.targets])  # (n_facts,)

    @property
    def target_ids(self) -> Tensor:
        return self._one_fact().targets[0]  # (n_target,)

    @property
    def n_target(self) -> int:
        return int(self.target_ids.numel())

    @property
    def essence_row(self) -> int:
        return self._one_fact().n_prompts

    @property
    def bare_row(self) -> int:
        return self._one_fact().bare_index

    def _one_fact(self) -> ValueBatch:
        if self.n_facts != 1:
            raise ValueError(f"this batch holds {self.n_facts} facts; read it per fact")
        return self


def build_value_batch(
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest,
    templates: Sequence[str],
    padding_side: str = "right",
) -> ValueBatch:
    """ROME's batch: one fact."""
    return build_facts_batch(tokenizer, [request], templates, padding_side)


def build_facts_batch(
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    padding_side: str = "right",
) -> ValueBatch:
    """The rewriting and essence prompts of every request in one batch; an input error names
    the fact it comes from."""
    if not requests:
        raise ValueError("no requests: the target optimization needs at least one fact")
    bare = bare_template_index(templates)
    targets: list[list[int]] = []
    prompts: list[str] = []
    subjects: list[str] = []
    continuations: list[list[int]] = []
    for fact, request in enumerate(requests):
        with _naming_fact(fact, request):
            target_ids = target_token_ids(tokenizer, request.target_new)  # quirk 1
            rewriting = [apply_template(t, request.prompt) for t in templates]  # quirk 2
        targets.append(target_ids)
        prompts += [*rewriting, ESSENCE_PROMPT]
        subjects += [request.subject] * (len(rewriting) + 1)
        continuations += [target_ids[:-1]] * len(rewriting) + [[]]
    try:
        batch = subject_last_positions(
            tokenizer, prompts, subjects, padding_side, continuations=continuations
        )
    except ValueError:
        _locate_failing_fact(tokenizer, requests, templates)
        raise
    return _with_read_positions(
        batch, len(templates), tuple(torch.tensor(t) for t in targets), bare
    )


@contextmanager
def _naming_fact(fact: int, request: EditRequest) -> Iterator[None]:
    try:
        yield
    except ValueError as err:
        raise ValueError(f"fact {fact} (subject {request.subject!r}): {err}") from None


def _locate_failing_fact(
    tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest], templates: Sequence[str]
) -> None:
    """Raise the error of the first fact whose subject cannot be located (the batch failed)."""
    for fact, request in enumerate(requests):
        with _naming_fact(fact, request):
            for prompt in [*(apply_template(t, request.prompt) for t in templates), ESSENCE_PROMPT]:
                subject_last_index(tokenizer, prompt, request.subject)


def align_value_batch(vb: ValueBatch, pad_id: int) -> ValueBatch:
    """``vb`` laid out with every subject-last token in one column (``rome_fast.edit.prefix``)."""
    aligned = align_subject_last(vb.batch, pad_id)
    return _with_read_positions(aligned, vb.n_prompts, vb.targets, vb.bare_index)


def _with_read_positions(
    batch: PromptBatch, n_prompts: int, targets: tuple[Tensor, ...], bare_index: int
) -> ValueBatch:
    longest = max(t.numel() for t in targets)
    rows, positions, ids, slots = [], [], [], []
    for fact, target in enumerate(targets):
        n_target = target.numel()
        fact_rows = fact * (n_prompts + 1) + torch.arange(n_prompts)  # (n_prompts,)
        # The logits at a prompt's last token predict the target's first token, and so on.
        first = batch.offsets[fact_rows] + batch.prompt_lengths[fact_rows] - 1  # (n_prompts,)
        positions.append((first[:, None] + torch.arange(n_target)).reshape(-1))
        rows.append(fact_rows.repeat_interleave(n_target))
        ids.append(target.repeat(n_prompts))
        prompt_index = fact * n_prompts + torch.arange(n_prompts)  # (n_prompts,)
        slots.append((prompt_index[:, None] * longest + torch.arange(n_target)).reshape(-1))
    return ValueBatch(
        batch,
        n_prompts,
        targets,
        torch.cat(rows),
        torch.cat(positions),
        torch.cat(ids),
        torch.cat(slots),
        bare_index,
    )


def readout_logits(
    model: nn.Module, inputs: dict[str, Any], rows: Tensor, positions: Tensor
) -> Tensor:
    """Next-token logits at ``(rows[i], positions[i])`` of the input columns only: (N, V) float32.

    The unembedding is applied to the gathered final hidden states, not to every position.
    """
    lm = cast(PreTrainedModel, model)
    hidden = lm.base_model(**inputs).last_hidden_state  # (B, T, d_model), final norm applied
    picked = hidden[rows.to(hidden.device), positions.to(hidden.device)]  # (N, d_model)
    unembed = lm.get_output_embeddings()
    assert unembed is not None, "the model has no output embeddings"
    logits: Tensor = unembed(picked)  # (N, vocab)
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


def rewriting_nll(log_probs: Tensor, vb: ValueBatch) -> Tensor:
    """Per fact, the mean over its prompts of (summed target-token NLL / target length)
    (quirk 4): (n_facts,).

    ``log_probs`` (n_reads, V) in the order of ``vb.target_rows``; the reads are laid into a
    (prompt, target token) grid padded with zeros to the longest target.
    """
    picked = log_probs.gather(-1, vb.read_ids[:, None].to(log_probs.device))[:, 0]  # (n_reads,)
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


@dataclass(frozen=True)
class _Reads:
    """Where the loss reads the logits, in suffix columns, and the MLP positions it needs."""

    rows: Tensor  # (n_reads + n_facts,): every target read, then each essence prompt
    positions: Tensor  # (n_reads + n_facts,)
    keep: dict[nn.Module, Tensor]  # per MLP above the edited layer, for only_at


def _reads(
    vb: ValueBatch, split: int, mlps: Sequence[nn.Module], layer: int, device: torch.device
) -> _Reads:
    read_rows = torch.cat([vb.target_rows, vb.essence_rows])
    read_positions = torch.cat([vb.target_positions, vb.batch.positions[vb.essence_rows]])
    read_positions = read_positions - split  # suffix columns
    n_rows, width = vb.batch.input_ids.shape
    below, top = read_mlp_positions(read_rows, read_positions, n_rows, width - split)
    # the MLPs above the edited layer run only where the loss depends on their output
    keep = dict.fromkeys(mlps[layer + 1 : -1], below)
    keep |= dict.fromkeys(mlps[layer + 1 :][-1:], top)
    return _Reads(read_rows.to(device), read_positions.to(device), keep)


def optimize_facts(
    loaded: LoadedModel,
    site: EditedSite,
    vb: ValueBatch,
    options: VStarOptions,
    scale_by: ScaleBy,
) -> FactsResult:
    """One optimization of every fact's δ (a row of δ (n, d)) on the aligned batch ``vb``:
    the loss is the sum of the facts' losses, each fact stops on its own loss (its δ frozen
    exactly from then on) and is clamped to its own ball."""
    model = loaded.model
    device = loaded.device
    mlps = [loaded.adapter.mlp(model, i) for i in range(loaded.adapter.n_layers(model))]
    prefix = PrefixCache(model, vb.batch, device, mlps)  # columns before the subject-last tokens
    # Every row's subject-last token is column 0 of the suffix the loop runs.
    delta_index = (vb.batch.rows.to(device), torch.zeros_like(vb.batch.rows).to(device))
    reads = _reads(vb, prefix.split, mlps, site.layer, device)
    n_read = vb.target_rows.numel()

    clean = clean_suffix_pass(loaded, site, prefix)
    bare_rows = vb.bare_rows.to(device)
    module_init = clean.module_output[bare_rows, 0].float()  # (n, d_out), quirk 9
    block_init = clean.block_output[bare_rows, 0].float()  # (n, d_model): h
    # The keys come free: a rewriting prompt up to its subject-last token is the key prompt.
    keys = clean.module_input[:, 0].float().view(vb.n_facts, vb.rows_per_fact, -1)
    clean_block = clean.block_output  # (B, W - split, d_model)
    scale = block_init if scale_by == "block" else module_init  # (n, d)
    # the product in float64 as the public code's Python float, then float32 as it is used
    radius = (options.clamp_norm_factor * torch.linalg.vector_norm(scale, dim=-1).double()).float()

    delta = torch.zeros_like(module_init, requires_grad=True)  # (n, d_out) float32
    optimizer = torch.optim.Adam([delta], lr=options.lr)
    initial_kl: Tensor | None = None
    records: list[list[dict[str, float]]] = [[] for _ in range(vb.n_facts)]
    steps = [0] * vb.n_facts
    running = torch.ones(vb.n_facts, dtype=torch.bool)  # facts still optimized
    blocks = loaded.adapter.layers(model)
    with (
        loop_precision(options.precision, device) as forward_precision,
        only_at(reads.keep, device),
        grouped_kv_attention(model, device),
    ):
        for iteration in range(options.num_grad_steps):  # quirk 7
            # δ on the MLP output is δ on the block output: every family adds the MLP output
            # straight into the residual stream (quirk 3). Each row gets its own fact's δ.
            per_row = delta[:, None].expand(-1, vb.rows_per_fact, -1).reshape(-1, delta.shape[1])
            shifted = clean_block[delta_index] + per_row.to(clean_block.dtype)
            edited_block = clean_block.index_put(delta_index, shifted)
            with (
                replay_blocks(blocks, site.layer, edited_block, as_tuple=clean.block_is_tuple),
                forward_precision(),
            ):
                logits = readout_logits(model, prefix.suffix_inputs(), reads.rows, reads.positions)
            log_probs = torch.log_softmax(logits, dim=-1)
            if initial_kl is None:  # the first pass has δ = 0
                initial_kl = log_probs[n_read:].detach()
            terms = LossTerms(
                nll=rewriting_nll(log_probs[:n_read], vb),
                kl=options.kl_factor * essence_kl(log_probs[n_read:], initial_kl),
                weight_decay=options.weight_decay * weight_decay(delta, scale),
            )
            # The one host synchronization per iteration: the trace and the early-stop decision.
            last = iteration == options.num_grad_steps - 1
            for fact, step in enumerate(loss_steps(terms, delta)):
                if running[fact]:
                    records[fact].append(step)
                    running[fact] = not (step["total"] < options.early_stop_loss or last)
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
