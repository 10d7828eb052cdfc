"""k* and k_prompt: batched, stopped at the edited layer, equal to one-prompt-at-a-time keys."""

from __future__ import annotations

import pytest
import torch

from rome_fast.edit.keys import compute_keys
from rome_fast.model.hooks import capture
from rome_fast.model.tokens import apply_template, subject_last_index
from tests.models import EDIT, FAMILIES, REQUEST, TEMPLATES, at, tiny_model

LAYER = 1


def reference_key(family: str, prompt: str, subject: str) -> torch.Tensor:
    """The edited module's input at the subject's last token, one unpadded full forward."""
    loaded = tiny_model(family)
    ids, index = subject_last_index(loaded.tokenizer, prompt, subject)
    module = loaded.adapter.edited_module(loaded.model, LAYER)
    with torch.no_grad(), capture(module) as seen:
        loaded.model(input_ids=torch.tensor([ids]))
    assert seen.input is not None
    return seen.input[0, index].float()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_keys_match_one_prompt_at_a_time(family: str, padding_side: str) -> None:
    prompt, subject, _ = REQUEST
    keys = compute_keys(*at(tiny_model(family), LAYER), EDIT, TEMPLATES, padding_side)
    expected = torch.stack(
        [reference_key(family, apply_template(t, prompt), subject) for t in TEMPLATES]
    )
    torch.testing.assert_close(keys.per_template, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(keys.k_star, expected.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        keys.k_prompt, reference_key(family, prompt, subject), rtol=1e-5, atol=1e-6
    )


def test_the_forward_stops_at_the_edited_layer() -> None:
    loaded = tiny_model("tiny-gpt2")
    calls = []
    above = loaded.adapter.block(loaded.model, LAYER + 1)
    handle = above.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        compute_keys(*at(loaded, LAYER), EDIT, TEMPLATES)
    finally:
        handle.remove()
    assert calls == []


def test_templates_without_the_bare_prompt_are_refused() -> None:
    with pytest.raises(ValueError, match="bare template"):
        compute_keys(*at(tiny_model("tiny-gpt2"), LAYER), EDIT, ["A. {}"])
