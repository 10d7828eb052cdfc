"""Keys of a batch of requests: one pass, equal to each request's own keys; the key matrix."""

from __future__ import annotations

import pytest
import torch

from rome_fast.edit.batch_keys import compute_batch_keys, key_matrix, key_prompts, keys_from_prompts
from rome_fast.edit.keys import compute_keys
from rome_fast.edit.request import EditRequest
from tests.models import EDIT, FAMILIES, TEMPLATES, at, fresh_model, tiny_model

LAYER = 1
REQUESTS = [
    EDIT,
    EditRequest("{} plays the", "Miles Davis", "piano"),
    EditRequest("The capital of {} is", "the Republic of France", "Lyon"),
]
# Batched against one request at a time: measured at most 3.5e-7 of max |k| (≈ 3 ε₃₂; the
# padding and the batch shape change the summation order); 16 ε₃₂ is a 5× margin.
TOLERANCE = 16 * torch.finfo(torch.float32).eps


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batch_keys_are_each_requests_keys(family: str, padding_side: str) -> None:
    loaded, site = at(tiny_model(family), LAYER)
    batch = compute_batch_keys(loaded, site, REQUESTS, TEMPLATES, padding_side)
    for request, keys in zip(REQUESTS, batch, strict=True):
        alone = compute_keys(loaded, site, request, TEMPLATES, padding_side).per_template
        error = float((keys.per_template - alone).abs().max() / alone.abs().max())
        assert error <= TOLERANCE, (request, error)


def test_the_key_matrix_columns() -> None:
    loaded, site = at(tiny_model("tiny-gpt2"), LAYER)
    keys = compute_batch_keys(loaded, site, REQUESTS, TEMPLATES)
    T = len(TEMPLATES)
    K_star = key_matrix(keys, TEMPLATES, "k_star")
    K_prompt = key_matrix(keys, TEMPLATES, "k_prompt")
    K_memit = key_matrix(keys, TEMPLATES, "memit")
    assert K_star.shape == (site.d_in, len(REQUESTS))
    assert torch.equal(K_prompt[:, 1], keys[1].k_prompt)
    # the prefixes' mean from k* = mean over all T templates: (T k* − k_prompt) / (T − 1)
    prefix_mean = (T * K_star - K_prompt) / (T - 1)
    # measured 5.2e-8 of max |k| (float32 sums in another order); 16 ε₃₂: a 36× margin
    error = float(((K_prompt + prefix_mean) / 2 - K_memit).abs().max() / K_memit.abs().max())
    assert error <= TOLERANCE


def test_a_template_list_without_the_bare_prompt_is_refused() -> None:
    loaded, site = at(tiny_model("tiny-gpt2"), LAYER)
    with pytest.raises(ValueError, match="must include the bare template"):
        compute_batch_keys(loaded, site, REQUESTS, ["A. {}"])


@pytest.mark.parametrize("family", FAMILIES)
def test_keys_above_an_edited_layer_replay_the_blocks_below_it_exactly(family: str) -> None:
    """The schedule's keys at a later layer on the model as the first edited layer left it:
    the blocks below the first layer, run once before that edit and replayed, give the keys of
    a fresh pass on the edited model bit for bit."""
    loaded = fresh_model(family)
    first, later = at(loaded, LAYER)[1], at(loaded, LAYER + 1)[1]
    prompts = key_prompts(loaded, REQUESTS, TEMPLATES, first.layer)
    at_first = keys_from_prompts(loaded, first, prompts)
    with torch.no_grad():
        first.weight.add_(
            torch.randn(first.weight.shape, generator=torch.Generator().manual_seed(0))
        )
    for replayed, fresh in (
        (at_first, compute_batch_keys(loaded, first, REQUESTS, TEMPLATES)),  # its input: unedited
        (
            keys_from_prompts(loaded, later, prompts),
            compute_batch_keys(loaded, later, REQUESTS, TEMPLATES),
        ),
    ):
        for mine, theirs in zip(replayed, fresh, strict=True):
            assert torch.equal(mine.per_template, theirs.per_template)
