"""Context templates: the public schedule, seeded, braces escaped, top-k sampling."""

from __future__ import annotations

import inspect
import unicodedata

import pytest
import torch

from rome_fast.edit.templates import (
    generate_context_templates,
    sample_top_k,
    start_token_id,
)
from rome_fast.hparams.defaults import PUBLIC_SCHEDULE, hparams_for
from rome_fast.model.tokens import escape_braces, split_prompt
from tests.models import require_smollm2, tiny_model

SMALL = ((3, 2), (4, 2))


def test_public_schedule_gives_21_one_slot_templates() -> None:
    loaded = tiny_model("tiny-gpt2")
    templates = generate_context_templates(loaded.model, loaded.tokenizer, seed=0)
    assert len(templates) == 21
    assert templates[0] == "{}"
    for template in templates[1:]:
        before, after = split_prompt(template)  # a valid format string with one slot
        assert before.endswith(". "), template
        assert after == "", template


def test_same_seed_same_templates_other_seed_others() -> None:
    loaded = tiny_model("tiny-gpt2")
    first = generate_context_templates(loaded.model, loaded.tokenizer, SMALL, seed=3)
    again = generate_context_templates(loaded.model, loaded.tokenizer, SMALL, seed=3)
    other = generate_context_templates(loaded.model, loaded.tokenizer, SMALL, seed=4)
    assert first == again
    assert first != other


def test_generation_leaves_the_global_rng_alone() -> None:
    loaded = tiny_model("tiny-gpt2")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate_context_templates(loaded.model, loaded.tokenizer, SMALL, seed=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama"])
def test_sampled_tokens_are_in_the_top_k_of_the_full_forward(family: str) -> None:
    # The KV-cache path must sample from the same distribution as a plain forward pass.
    loaded = tiny_model(family)
    start = torch.full((4, 1), start_token_id(loaded.tokenizer))
    ids = sample_top_k(loaded.model, start, 6, 5, torch.Generator().manual_seed(0))
    assert ids.shape == (4, 7)
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits  # (4, 7, V)
    top = logits[:, :-1].topk(5, dim=-1).indices  # (4, 6, 5)
    assert bool((top == ids[:, 1:, None]).any(-1).all()), ids


def test_lengths_count_the_start_token() -> None:
    loaded = tiny_model("tiny-gpt2")
    start = torch.full((2, 1), start_token_id(loaded.tokenizer))
    assert sample_top_k(loaded.model, start, 4, 5, torch.Generator()).shape == (2, 5)


def test_braces_in_generated_text_are_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = tiny_model("tiny-gpt2")
    monkeypatch.setattr(loaded.tokenizer, "decode", lambda *_a, **_k: "a {b} }c{")
    templates = generate_context_templates(loaded.model, loaded.tokenizer, ((3, 1),), seed=0)
    assert templates == ["{}", "a {{b}} }}c{{. {}"]
    assert split_prompt(templates[1]) == ("a {b} }c{. ", "")


def test_bad_schedule_raises() -> None:
    loaded = tiny_model("tiny-gpt2")
    with pytest.raises(ValueError, match="schedule"):
        generate_context_templates(loaded.model, loaded.tokenizer, ((0, 3),))


def test_gpt2_starts_from_endoftext() -> None:
    tok = tiny_model("tiny-gpt2").tokenizer
    assert start_token_id(tok) == tok.convert_tokens_to_ids("<|endoftext|>") == 50256


@pytest.mark.smollm2
def test_smollm2_starts_from_its_document_separator() -> None:
    require_smollm2()
    from rome_fast.model.loader import load_model

    tok = load_model("smollm2").tokenizer
    assert start_token_id(tok) == 0 != tok.bos_token_id
    assert tok.convert_ids_to_tokens([0]) == ["<|endoftext|>"]


def test_template_parameters_are_the_public_codes() -> None:
    """SPEC: schedule [[5, 10], [10, 10]], top-k 5, each text as "<generated>. {}" (asserted
    directly, not only through their effect)."""
    hparams = hparams_for("tiny-gpt2")
    assert PUBLIC_SCHEDULE == ((5, 10), (10, 10))
    assert hparams.v_star.context_template_schedule == PUBLIC_SCHEDULE
    assert hparams.v_star.context_template_top_k == 5
    defaults = inspect.signature(generate_context_templates).parameters
    assert defaults["schedule"].default == PUBLIC_SCHEDULE
    assert defaults["top_k"].default == 5


def test_each_template_is_the_generated_text_then_a_period() -> None:
    """The length counts the start token: (5, n) decodes 4 sampled tokens into "<text>. {}"."""
    loaded = tiny_model("tiny-gpt2")
    (_, template) = generate_context_templates(loaded.model, loaded.tokenizer, ((5, 1),), seed=0)
    start = torch.full((1, 1), start_token_id(loaded.tokenizer))
    ids = sample_top_k(loaded.model, start, 4, 5, torch.Generator().manual_seed(0))
    decoded = loaded.tokenizer.decode(ids[0, 1:].tolist())
    assert isinstance(decoded, str)
    text = unicodedata.normalize("NFKD", decoded)
    assert template == escape_braces(text.replace("\n\n", " ")) + ". {}"
