"""Subject-last token positions, right for BPE, with left or right padding.

A prompt is a ``str.format`` string with exactly one ``{}`` slot where the subject goes
(``"{{"`` and ``"}}"`` are literal braces). The key position is the last token of the
subject *at that slot*, as in the public code (which finds it with ``prompt.index("{}")``):
a subject that also occurs elsewhere in the text is never looked up there.

The index is found the public code's way, by tokenizing the text up to and including the
subject and counting its tokens, and is then verified against the tokenization of the whole
text: the two must agree on those tokens, otherwise the subject's last token merged with the
text after it (e.g. ``"{}s"``) and no token ends the subject, which is an error.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

PADDING_SIDES = ("right", "left")


def split_prompt(prompt: str) -> tuple[str, str]:
    """The literal text before and after the single ``{}`` slot of ``prompt``."""
    try:
        parts = list(string.Formatter().parse(prompt))
    except ValueError as err:
        raise ValueError(
            f"prompt {prompt!r} is not a valid format string ({err}); write "
            "literal braces as '{{' and '}}'"
        ) from None
    slots = [p for p in parts if p[1] is not None]
    if len(slots) != 1 or slots[0][1:] != ("", "", None):
        raise ValueError(
            f"prompt {prompt!r} must contain exactly one '{{}}' where the subject "
            f"goes (found {len(slots)} replacement fields); e.g. "
            "'{} is located in the city of'"
        )
    before: list[str] = []
    after: list[str] = []
    seen = False
    for literal, field, _spec, _conv in parts:
        (after if seen else before).append(literal)
        seen = seen or field is not None
    return "".join(before), "".join(after)


def escape_braces(text: str) -> str:
    """``text`` as a literal inside a format string."""
    return text.replace("{", "{{").replace("}", "}}")


def apply_template(template: str, prompt: str) -> str:
    """The format string of ``prompt`` placed in ``template``'s slot (both one-slot strings).

    Unlike the public code's ``template.format(prompt)``, literal braces stay escaped, so the
    result is again a valid one-slot prompt.
    """
    t_before, t_after = split_prompt(template)
    p_before, p_after = split_prompt(prompt)
    return escape_braces(t_before + p_before) + "{}" + escape_braces(p_after + t_after)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    ids: list[int] = tokenizer(text)["input_ids"]
    return ids


def subject_last_index(
    tokenizer: PreTrainedTokenizerBase, prompt: str, subject: str
) -> tuple[list[int], int]:
    """Token ids of ``prompt`` with ``subject`` in its slot, and the subject's last token index."""
    if not subject.strip():
        raise ValueError(f"the subject must be a non-empty string, got {subject!r}")
    before, after = split_prompt(prompt)
    through_subject = _ids(tokenizer, before + subject)  # (public code: count these tokens)
    full = _ids(tokenizer, before + subject + after)
    if full[: len(through_subject)] != through_subject:
        raise ValueError(
            f"cannot locate the last token of subject {subject!r} in prompt {prompt!r}: with "
            f"this tokenizer no token ends where the subject ends (its last token merges with "
            f"the text after it, {after[:12]!r}); put a space or punctuation after the slot"
        )
    return full, len(through_subject) - 1


@dataclass(frozen=True)
class PromptBatch:
    """A padded batch of prompts and where each subject's last token sits in it."""

    input_ids: Tensor  # (B, T)
    attention_mask: Tensor  # (B, T)
    position_ids: Tensor  # (B, T) counting real tokens only, so left padding shifts nothing
    positions: Tensor  # (B,) subject-last token index in the padded batch
    offsets: Tensor  # (B,) where each row's first real token is (its left padding)
    prompt_lengths: Tensor  # (B,) tokens of the prompt proper (without continuation ids)

    @property
    def rows(self) -> Tensor:
        return torch.arange(self.input_ids.shape[0])

    def model_inputs(self, device: torch.device | str) -> dict[str, Tensor]:
        return {
            "input_ids": self.input_ids.to(device),
            "attention_mask": self.attention_mask.to(device),
            "position_ids": self.position_ids.to(device),
        }


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that fills padding: the pad token, else end-of-text, else 0 (always masked)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(candidate, int):
            return candidate
    return 0


def target_token_ids(tokenizer: PreTrainedTokenizerBase, target: str) -> list[int]:
    """The ids of a target: ``" " + target.lstrip(" ")``, without special tokens.

    One rule wherever a target is turned into tokens, written into the model (v*) or scored
    (NLL), so a target means the same tokens in both. The public code prepends a space when
    it edits (``" " + target`` unless the target starts with one, SPEC §3) and always when it
    scores (``f" {target}"``, SPEC §5): the two agree on every target without a leading space
    (all of CounterFact) and disagree on one that has some (scored, ``" Rome"`` becomes two
    spaces). Leading spaces are therefore dropped and exactly one is put back: the target is
    a word that follows the prompt after one space. No special tokens: a BOS-adding tokenizer
    (the Llama family) must not put its BOS inside the target.
    """
    if not target.strip():
        raise ValueError(f"the target must be a non-empty string, got {target!r}")
    ids: list[int] = tokenizer(" " + target.lstrip(" "), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"target {target!r} tokenizes to nothing with this tokenizer")
    return ids


def subject_last_positions(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    subjects: Sequence[str],
    padding_side: str = "right",
    *,
    continuations: Sequence[Sequence[int]] | None = None,
) -> PromptBatch:
    """Tokenize ``prompts[i]`` with ``subjects[i]`` in its slot, pad, locate the subjects.

    ``continuations[i]`` (token ids) is appended after prompt ``i`` as ids, so it is never
    re-tokenized together with the prompt.
    """
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
    if len(prompts) != len(subjects) or not prompts:
        raise ValueError(
            f"need one subject per prompt and at least one prompt, got "
            f"{len(prompts)} prompts and {len(subjects)} subjects"
        )
    tails = [[] for _ in prompts] if continuations is None else [list(c) for c in continuations]
    if len(tails) != len(prompts):
        raise ValueError(f"{len(tails)} continuations for {len(prompts)} prompts")
    located = [subject_last_index(tokenizer, p, s) for p, s in zip(prompts, subjects, strict=True)]
    rows = [ids + tail for (ids, _), tail in zip(located, tails, strict=True)]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    offsets = torch.tensor([width - len(r) if padding_side == "left" else 0 for r in rows])
    for i, row in enumerate(rows):
        start = int(offsets[i])
        input_ids[i, start : start + len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, start : start + len(row)] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    positions = offsets + torch.tensor([index for _, index in located])
    prompt_lengths = torch.tensor([len(ids) for ids, _ in located])
    return PromptBatch(input_ids, attention_mask, position_ids, positions, offsets, prompt_lengths)
