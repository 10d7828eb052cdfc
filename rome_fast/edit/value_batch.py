"""The prompts of the target optimization (ROME's v*, MEMIT's z) and the positions its loss
reads, for one fact or n facts in one batch (``rome_fast.edit.value``, quirks 1, 2 and 9).

Rows are fact-major: fact i's rewriting prompts (each template applied to its prompt, followed
by its target's tokens but the last, appended as ids), then its essence prompt
``"{subject} is a"``. An input error (a prompt without its slot, a subject no token ends, an
empty target) names the fact it comes from.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from rome_fast.edit.keys import bare_template_index
from rome_fast.edit.prefix import align_subject_last
from rome_fast.edit.request import EditRequest
from rome_fast.model.tokens import (
    PromptBatch,
    apply_template,
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


def select_facts(vb: ValueBatch, facts: Tensor) -> ValueBatch:
    """The rows of ``facts`` (m,), in that order, with their read positions: the same columns
    (an aligned batch stays aligned; align again to drop columns no selected row uses)."""
    rows = fact_rows(facts, vb.rows_per_fact)
    batch = vb.batch
    selected = PromptBatch(
        *(t[rows] for t in (batch.input_ids, batch.attention_mask, batch.position_ids)),
        *(t[rows] for t in (batch.positions, batch.offsets, batch.prompt_lengths)),
    )
    targets = tuple(vb.targets[fact] for fact in facts.tolist())
    return _with_read_positions(selected, vb.n_prompts, targets, vb.bare_index)


def fact_rows(facts: Tensor, rows_per_fact: int) -> Tensor:
    """The batch rows of ``facts`` (m,), fact-major: (m · rows_per_fact,)."""
    return (facts[:, None] * rows_per_fact + torch.arange(rows_per_fact)).flatten()


def suffix_widths(vb: ValueBatch) -> Tensor:
    """Per fact, the most tokens any of its rows has from its subject-last token on: the
    columns the target loop runs for it (n_facts,)."""
    batch = vb.batch
    ends = batch.offsets + batch.attention_mask.sum(1)  # (B,) one past each row's last token
    return (ends - batch.positions).view(vb.n_facts, vb.rows_per_fact).amax(1)


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
