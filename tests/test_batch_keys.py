"""Keys of a batch of requests: one pass, equal to each request's own keys; the key matrix."""

from __future__ import annotations

import pytest
import torch

from rome_fast.edit.batch_keys import compute_batch_keys, key_matrix
from rome_fast.edit.keys import compute_keys
from rome_fast.edit.request import EditRequest
from tests.models import EDIT, FAMILIES, TEMPLATES, at, tiny_model

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
