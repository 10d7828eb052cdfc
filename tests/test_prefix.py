"""The aligned layout and the prefix cache: a suffix-only pass equals the full forward pass."""

from __future__ import annotations

from typing import cast

import pytest
import torch
from transformers import PreTrainedModel

from rome_fast.edit.prefix import PrefixCache, align_subject_last
from rome_fast.model.loader import LoadedModel
from rome_fast.model.tokens import PromptBatch, apply_template, pad_id, subject_last_positions
from tests.models import FAMILIES, REQUEST, TEMPLATES, tiny_model

PROMPTS = [apply_template(t, REQUEST[0]) for t in TEMPLATES] + ["{} is a"]


def batch_for(
    family: str, padding_side: str, prompts: list[str], subject: str
) -> tuple[LoadedModel, PromptBatch, PromptBatch]:
    loaded = tiny_model(family)
    batch = subject_last_positions(
        loaded.tokenizer, prompts, [subject] * len(prompts), padding_side
    )
    return loaded, batch, align_subject_last(batch, pad_id(loaded.tokenizer))


def real_tokens(input_ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [ids[m.bool()].tolist() for ids, m in zip(input_ids, mask, strict=True)]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_alignment_puts_every_subject_last_token_in_one_column(padding_side: str) -> None:
    _, batch, aligned = batch_for("tiny-gpt2", padding_side, PROMPTS, REQUEST[1])
    split = int(aligned.positions[0])
    assert aligned.positions.tolist() == [split] * len(PROMPTS)
    assert split == int((batch.positions - batch.offsets).max())
    # same real tokens in the same order; the subject-last token is the same token
    assert real_tokens(aligned.input_ids, aligned.attention_mask) == real_tokens(
        batch.input_ids, batch.attention_mask
    )
    assert torch.equal(aligned.input_ids[:, split], batch.input_ids[batch.rows, batch.positions])
    # positions count real tokens only, as in the original layout
    assert torch.equal(
        aligned.position_ids[:, split], batch.position_ids[batch.rows, batch.positions]
    )


@pytest.mark.parametrize(
    ("prompts", "subject"), [(PROMPTS, REQUEST[1]), (["{} is in", "{} is a"], "Paris")]
)
@pytest.mark.parametrize("family", FAMILIES)
def test_suffix_pass_equals_the_full_forward(family: str, prompts: list[str], subject: str) -> None:
    loaded, batch, aligned = batch_for(family, "right", prompts, subject)
    base = cast(PreTrainedModel, loaded.model).base_model
    prefix = PrefixCache(loaded.model, aligned, torch.device("cpu"))
    with torch.no_grad():
        full = base(**batch.model_inputs("cpu")).last_hidden_state  # (B, T, d)
        first = base(**prefix.suffix_inputs()).last_hidden_state  # (B, W - split, d)
        again = base(**prefix.suffix_inputs()).last_hidden_state  # the cache is reusable
    split = prefix.split
    mask = aligned.attention_mask[:, split:].bool()
    # every real suffix token, in the original layout's columns
    rows, cols = mask.nonzero(as_tuple=True)
    original = cols + split - aligned.offsets[rows] + batch.offsets[rows]
    torch.testing.assert_close(first[rows, cols], full[rows, original], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    if subject == "Paris":  # one-token subject first in every prompt: nothing to cache
        assert split == 0


def test_an_unaligned_batch_is_refused() -> None:
    _, batch, _ = batch_for("tiny-gpt2", "right", PROMPTS, REQUEST[1])
    with pytest.raises(ValueError, match="align_subject_last"):
        PrefixCache(tiny_model("tiny-gpt2").model, batch, torch.device("cpu"))
