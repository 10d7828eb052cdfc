"""Key extraction: one full forward pass per template (naive) vs one batched pass stopped at
the edited module (fast), against the floor of blocks 0..layer−1 on the prompts' tokens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from benchmarks.conftest import REQUEST, EditSetup
from benchmarks.floors import Peaks, keys_floor
from rome_fast.edit.keys import compute_keys
from rome_fast.edit.naive import naive_keys
from rome_fast.model.loader import LoadedModel
from rome_fast.model.tokens import apply_template, subject_last_positions


def prompt_tokens(loaded: LoadedModel, templates: list[str]) -> int:
    """Real tokens of the key prompts (every template applied to the request's prompt)."""
    prompts = [apply_template(t, REQUEST.prompt) for t in templates]
    batch = subject_last_positions(loaded.tokenizer, prompts, [REQUEST.subject] * len(prompts))
    return int(batch.attention_mask.sum())


@pytest.mark.parametrize("impl", ["naive", "fast"])
def test_keys(
    run_bench: Callable[..., Any], peaks: Peaks, model_setup: EditSetup, impl: str
) -> None:
    s = model_setup
    args = (s.loaded, s.site, REQUEST, s.templates)
    fn = (lambda: naive_keys(*args)) if impl == "naive" else (lambda: compute_keys(*args))
    tokens = prompt_tokens(s.loaded, s.templates)
    keys = run_bench(
        fn,
        group=f"keys {s.loaded.name} layer {s.layer}",
        impl=impl,
        rounds=3,
        floor=keys_floor(peaks, s.loaded, s.layer, tokens),
        templates=len(s.templates),
        prompt_tokens=tokens,
    )
    reference = compute_keys(*args)
    torch.testing.assert_close(keys.k_star, reference.k_star, rtol=1e-4, atol=1e-5)
