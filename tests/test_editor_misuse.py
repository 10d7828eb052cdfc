"""The editor under misuse: two editors on one model, requests that cannot mean what they
say, and prompts longer than the model's context."""

from __future__ import annotations

import copy

import pytest
import torch

from rome_fast.edit.editor import Editor
from rome_fast.edit.ownership import ForeignWriteError
from rome_fast.edit.request import EditRequest
from rome_fast.eval.score import generate, mean_token_nll
from rome_fast.model.context import context_length, context_limit
from rome_fast.model.loader import LoadedModel, random_model
from tests.models import (
    REQUEST,
    TEMPLATES,
    changed_parameters,
    fresh_model,
    key_dim,
    random_spd,
    tiny_hparams,
    weights_of,
)

LAYER = 1
OTHER = EditRequest("{} plays the sport of", "Lionel Messi", "tennis")


def editor_on(loaded: LoadedModel, family: str = "tiny-gpt2") -> Editor:
    return Editor(
        loaded,
        hparams=tiny_hparams(family),
        templates=TEMPLATES,
        stats=random_spd(key_dim(loaded, LAYER)),
    )


def edited_weight(loaded: LoadedModel) -> torch.Tensor:
    weight = loaded.adapter.edited_module(loaded.model, LAYER).weight
    assert isinstance(weight, torch.Tensor)
    return weight


@pytest.mark.parametrize("undo", ["restore", "revert"])
def test_editor_refuses_to_undo_over_another_editors_write(undo: str) -> None:
    """A edits, B edits the same weight: A's undo would drop B's edit, so it is refused and
    changes nothing; undone last edit first, both get back to W0 bit for bit."""
    loaded = fresh_model("tiny-gpt2")
    w0 = weights_of(loaded)
    a, b = editor_on(loaded), editor_on(loaded)
    first = a.edit(EditRequest(*REQUEST), "r-rome")
    b.edit(OTHER, "r-rome")
    both = edited_weight(loaded).detach().clone()
    with pytest.raises(ForeignWriteError, match="changed by someone else"):
        a.restore() if undo == "restore" else a.revert(first)
    assert torch.equal(edited_weight(loaded), both)
    b.restore()
    a.restore() if undo == "restore" else a.revert(first)
    assert changed_parameters(loaded, w0) == []


def test_write_of_identical_bytes_is_not_a_foreign_change() -> None:
    loaded = fresh_model("tiny-gpt2")
    w0 = weights_of(loaded)
    editor = editor_on(loaded)
    editor.edit(EditRequest(*REQUEST), "r-rome")
    weight = edited_weight(loaded)
    with torch.no_grad():
        weight.copy_(weight.detach().clone())  # bumps the version, same bytes
    editor.restore()
    assert changed_parameters(loaded, w0) == []


def test_subject_of_invisible_characters_is_refused() -> None:
    with pytest.raises(ValueError, match="visible character"):
        EditRequest("{} is in", "\u200b\u200d", "Rome")


def test_new_target_equal_to_the_true_one_warns() -> None:
    with pytest.warns(UserWarning, match="equals the true one"):
        EditRequest("{} is in", "Paris", "France", target_true=" France")


def short_context(family: str, limit: int) -> LoadedModel:
    """The tiny model with a configured context of ``limit`` tokens."""
    loaded = random_model(family)
    # A copy: the model shares its config object with every model of the family.
    config = loaded.model.config = copy.deepcopy(loaded.model.config)
    field = "n_positions" if hasattr(config, "n_positions") else "max_position_embeddings"
    setattr(config, field, limit)
    assert context_limit(loaded.model) == limit
    return loaded


@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama"])
def test_statistics_truncate_to_the_context_scoring_refuses_past(family: str) -> None:
    """One reader: the length the statistics truncate documents to is the scoring limit."""
    loaded = short_context(family, 16)
    assert context_length(loaded.model) == context_limit(loaded.model) == 16
    with pytest.raises(ValueError, match=r"states no context length.*pass max_length="):
        context_length(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama"])
def test_scoring_a_prompt_beyond_the_context_names_the_limit(family: str) -> None:
    loaded = short_context(family, 16)
    prompt = " ".join(["word"] * 40)
    with pytest.raises(ValueError, match="context of 16 tokens"):
        mean_token_nll(loaded.model, loaded.tokenizer, [prompt], ["Rome"])
    with pytest.raises(ValueError, match="context of 16 tokens"):
        generate(loaded.model, loaded.tokenizer, [prompt], max_new_tokens=2)


@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama"])
def test_edit_prompt_beyond_the_context_is_refused_before_any_change(family: str) -> None:
    loaded = short_context(family, 16)
    w0 = weights_of(loaded)
    long_prompt = " ".join(["word"] * 40) + " {} is in"
    with pytest.raises(ValueError, match="context of 16 tokens"):
        editor_on(loaded, family).edit(EditRequest(long_prompt, "Paris", "Rome"))
    assert changed_parameters(loaded, w0) == []


def test_gpt2_prompt_beyond_its_real_context_is_refused() -> None:
    """Without a configured limit change: tiny-gpt2's own position table."""
    loaded = random_model("tiny-gpt2")
    limit = context_limit(loaded.model)
    assert limit is not None
    prompt = " ".join(["word"] * (limit + 5))
    with pytest.raises(ValueError, match=f"context of {limit} tokens"):
        mean_token_nll(loaded.model, loaded.tokenizer, [prompt], ["Rome"])
