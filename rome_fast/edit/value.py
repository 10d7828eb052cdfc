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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

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
    subject_last_positions,
    target_token_ids,
)

ESSENCE_PROMPT = "{} is a"


@dataclass(frozen=True)
class ValueBatch:
    """The prompts of the v* optimization and the positions the loss reads."""

    batch: PromptBatch  # n_prompts rewriting prompts, then the essence prompt
    n_prompts: int
    target_ids: Tensor  # (n_target,)
    target_rows: Tensor  # (n_prompts * n_target,)
    target_positions: Tensor  # (n_prompts * n_target,): logits there predict target_ids
    bare_row: int  # the rewriting prompt built from the bare template

    @property
    def essence_row(self) -> int:
        return self.n_prompts

    @property
    def n_target(self) -> int:
        return int(self.target_ids.numel())


def build_value_batch(
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest,
    templates: Sequence[str],
    padding_side: str = "right",
) -> ValueBatch:
    target_ids = target_token_ids(tokenizer, request.target_new)  # quirk 1
    rewriting = [apply_template(t, request.prompt) for t in templates]  # quirk 2
    n = len(rewriting)
    batch = subject_last_positions(
        tokenizer,
        [*rewriting, ESSENCE_PROMPT],
        [request.subject] * (n + 1),
        padding_side,
        continuations=[target_ids[:-1]] * n + [[]],
    )
    return _with_read_positions(batch, n, torch.tensor(target_ids), bare_template_index(templates))


def align_value_batch(vb: ValueBatch, pad_id: int) -> ValueBatch:
    """``vb`` laid out with every subject-last token in one column (``rome_fast.edit.prefix``)."""
    aligned = align_subject_last(vb.batch, pad_id)
    return _with_read_positions(aligned, vb.n_prompts, vb.target_ids, vb.bare_row)


def _with_read_positions(
    batch: PromptBatch, n_prompts: int, target_ids: Tensor, bare_row: int
) -> ValueBatch:
    n_target = int(target_ids.numel())
    # The logits at a prompt's last token predict the target's first token, and so on.
    first = batch.offsets[:n_prompts] + batch.prompt_lengths[:n_prompts] - 1  # (n_prompts,)
    target_positions = (first[:, None] + torch.arange(n_target)).reshape(-1)
    target_rows = torch.arange(n_prompts).repeat_interleave(n_target)
    return ValueBatch(batch, n_prompts, target_ids, target_rows, target_positions, bare_row)


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


def loss_step(terms: LossTerms, loss: Tensor, delta: Tensor) -> dict[str, float]:
    """One iteration's parts (``LOSS_PARTS``), read with one host synchronization."""
    parts = torch.stack(
        [terms.nll, terms.kl, terms.weight_decay, loss, torch.linalg.vector_norm(delta)]
    )
    return dict(zip(LOSS_PARTS, parts.detach().float().tolist(), strict=True))


def rewriting_nll(log_probs: Tensor, target_ids: Tensor, n_prompts: int) -> Tensor:
    """Mean over prompts of (summed target-token NLL / target length) (quirk 4).

    ``log_probs`` (n_prompts * n_target, V) in the order of ``ValueBatch.target_rows``.
    """
    n_target = target_ids.numel()
    picked = log_probs.gather(-1, target_ids.repeat(n_prompts)[:, None].to(log_probs.device))
    per_prompt = -picked.view(n_prompts, n_target).sum(1) / n_target  # (n_prompts,)
    return per_prompt.mean()


def essence_kl(log_probs: Tensor, initial_log_probs: Tensor) -> Tensor:
    """KL(p_current ‖ p_initial), batch-mean over the essence prompts (quirk 5)."""
    return F.kl_div(initial_log_probs, log_probs, log_target=True, reduction="batchmean")


def weight_decay(delta: Tensor, v_init: Tensor) -> Tensor:
    """‖δ‖ / ‖v_init‖², unsquared as in the public code (quirk 6)."""
    decay: Tensor = torch.linalg.vector_norm(delta) / torch.linalg.vector_norm(v_init) ** 2
    return decay


def clamp_to_ball(delta: Tensor, radius: float) -> None:
    """Project δ into the ball of ``radius`` in place (quirk 8).

    The scale is computed on δ's device (no host synchronization); inside the ball it is
    exactly 1, so δ is untouched there.
    """
    with torch.no_grad():
        delta.mul_((radius / torch.linalg.vector_norm(delta)).clamp(max=1.0))


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
    """Optimize δ at the edited module's output; see the module docstring."""
    vb = align_value_batch(
        build_value_batch(loaded.tokenizer, request, templates, options.padding_side),
        pad_id(loaded.tokenizer),
    )
    with onednn_linears(loaded.model):
        return _optimize(loaded, site, vb, options)


def _optimize(
    loaded: LoadedModel, site: EditedSite, vb: ValueBatch, options: VStarOptions
) -> ValueResult:
    """The loop of :func:`compute_v_star` on its aligned batch."""
    model = loaded.model
    device = loaded.device
    n_layers = loaded.adapter.n_layers(model)
    mlps = [loaded.adapter.mlp(model, i) for i in range(n_layers)]
    prefix = PrefixCache(model, vb.batch, device, mlps)  # columns before the subject-last tokens
    # Every row's subject-last token is column 0 of the suffix the loop runs.
    delta_index = (vb.batch.rows.to(device), torch.zeros_like(vb.batch.rows).to(device))
    read_rows = torch.cat([vb.target_rows, torch.tensor([vb.essence_row])])
    read_positions = torch.cat([vb.target_positions, vb.batch.positions[vb.essence_row :]])
    read_positions = read_positions - prefix.split  # suffix columns
    n_rows, width = vb.batch.input_ids.shape
    below, top = read_mlp_positions(read_rows, read_positions, n_rows, width - prefix.split)
    # the MLPs above the edited layer run only where the loss depends on their output
    keep = dict.fromkeys(mlps[site.layer + 1 : -1], below)
    keep |= dict.fromkeys(mlps[site.layer + 1 :][-1:], top)
    read_rows, read_positions = read_rows.to(device), read_positions.to(device)
    n_read = vb.target_rows.numel()

    clean = clean_suffix_pass(loaded, site, prefix)
    v_init = clean.module_output[vb.bare_row, 0].float()  # quirk 9
    # The keys come free: a rewriting prompt up to its subject-last token is the key prompt.
    keys = clean.module_input[: vb.n_prompts, 0].float()  # (n_prompts, d_in), template order
    clean_block = clean.block_output  # (B, W - split, d_model)
    radius = options.clamp_norm_factor * float(torch.linalg.vector_norm(v_init))

    delta = torch.zeros_like(v_init, requires_grad=True)  # (d_out,) float32
    optimizer = torch.optim.Adam([delta], lr=options.lr)
    initial_kl: Tensor | None = None
    trace: list[float] = []
    steps_record: list[dict[str, float]] = []
    steps = 0
    blocks = loaded.adapter.layers(model)
    with (
        loop_precision(options.precision, device) as forward_precision,
        only_at(keep, device),
        grouped_kv_attention(model, device),
    ):
        for iteration in range(options.num_grad_steps):  # quirk 7
            # δ on the MLP output is δ on the block output: every family adds the MLP output
            # straight into the residual stream (quirk 3).
            shifted = clean_block[delta_index] + delta.to(clean_block.dtype)
            edited_block = clean_block.index_put(delta_index, shifted)
            with (
                replay_blocks(blocks, site.layer, edited_block, as_tuple=clean.block_is_tuple),
                forward_precision(),
            ):
                logits = readout_logits(model, prefix.suffix_inputs(), read_rows, read_positions)
            log_probs = torch.log_softmax(logits, dim=-1)
            if initial_kl is None:  # the first pass has δ = 0
                initial_kl = log_probs[n_read:].detach()
            terms = LossTerms(
                nll=rewriting_nll(log_probs[:n_read], vb.target_ids, vb.n_prompts),
                kl=options.kl_factor * essence_kl(log_probs[n_read:], initial_kl),
                weight_decay=options.weight_decay * weight_decay(delta, v_init),
            )
            loss = terms.total
            # The one host synchronization per iteration: the trace and the early-stop decision.
            steps_record.append(loss_step(terms, loss, delta))
            trace.append(steps_record[-1]["total"])
            if trace[-1] < options.early_stop_loss or iteration == options.num_grad_steps - 1:
                break
            optimizer.zero_grad()
            (delta.grad,) = torch.autograd.grad(loss, [delta])  # grads of δ only, never the model's
            optimizer.step()
            steps += 1
            clamp_to_ball(delta, radius)
    final = delta.detach().clone()
    return ValueResult(
        v_star=v_init + final,
        v_init=v_init,
        delta=final,
        loss_trace=trace,
        adam_steps=steps,
        keys=keys,
        loss_steps=steps_record,
    )
