"""Mean per-token NLL scoring and seeded generation on a tiny random GPT-2."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from rome_fast.eval.score import generate, target_ids, target_nll
from rome_fast.model.loader import LoadedModel, random_model

PROMPTS = ["The mother tongue of Danielle Darrieux is", "Paris is the capital of", "A"]
TARGETS = ["French", "the French Republic", "B"]


@pytest.fixture(scope="module")
def lm() -> Iterator[LoadedModel]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only add overhead
    yield random_model("tiny-gpt2")
    torch.set_num_threads(threads)


def reference_nll(lm: LoadedModel, prompt: str, target: str) -> float:
    """One unpadded sequence, the loss computed by hand from log-softmax."""
    head = lm.tokenizer(prompt)["input_ids"]
    tail = lm.tokenizer(" " + target)["input_ids"]
    ids = torch.tensor([head + tail])
    with torch.no_grad():
        log_probs = torch.log_softmax(lm.model(input_ids=ids).logits[0].double(), -1)
    return float(-np.mean([log_probs[len(head) - 1 + i, t].item() for i, t in enumerate(tail)]))


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_nll_matches_unpadded_reference(lm: LoadedModel, side: str) -> None:
    got = target_nll(lm.model, lm.tokenizer, PROMPTS, TARGETS, padding_side=side)
    expected = [reference_nll(lm, p, t) for p, t in zip(PROMPTS, TARGETS, strict=True)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_batch_size_does_not_change_scores(lm: LoadedModel) -> None:
    one = target_nll(lm.model, lm.tokenizer, PROMPTS, TARGETS, batch_size=1)
    np.testing.assert_allclose(target_nll(lm.model, lm.tokenizer, PROMPTS, TARGETS), one, rtol=1e-5)


def test_target_gets_exactly_one_leading_space(lm: LoadedModel) -> None:
    spaced = lm.tokenizer(" French", add_special_tokens=False)["input_ids"]
    assert spaced != lm.tokenizer("French", add_special_tokens=False)["input_ids"]
    assert target_ids(lm.tokenizer, "French") == spaced
    assert target_ids(lm.tokenizer, " French") == spaced


def test_target_ids_carry_no_special_tokens(lm: LoadedModel) -> None:
    """A BOS-adding tokenizer (Llama family) must not put its BOS into the scored target."""
    tokenizer = copy.deepcopy(lm.tokenizer)  # a shallow copy would change the shared one
    tokenizer.add_bos_token = True
    assert tokenizer(" French")["input_ids"][0] == tokenizer.bos_token_id
    spaced = lm.tokenizer(" French", add_special_tokens=False)["input_ids"]
    assert target_ids(tokenizer, "French") == spaced


def test_mismatched_lengths_are_rejected(lm: LoadedModel) -> None:
    with pytest.raises(ValueError, match="pair them up"):
        target_nll(lm.model, lm.tokenizer, PROMPTS, TARGETS[:1])


def test_greedy_generation_is_independent_of_batching(lm: LoadedModel) -> None:
    alone = generate(lm.model, lm.tokenizer, PROMPTS[:1], max_new_tokens=6, top_k=None)
    batched = generate(lm.model, lm.tokenizer, PROMPTS, max_new_tokens=6, top_k=None)
    assert batched.token_ids[0] == alone.token_ids[0]


def test_sampling_is_seeded(lm: LoadedModel) -> None:
    runs = [
        generate(lm.model, lm.tokenizer, PROMPTS, max_new_tokens=8, seed=s).token_ids
        for s in (3, 3, 4)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
