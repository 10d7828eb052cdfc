"""Mean per-token NLL scoring and seeded generation on a tiny random GPT-2."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from rome_fast.edit.request import EditRequest
from rome_fast.edit.value import build_value_batch
from rome_fast.eval.score import generate, mean_token_nll
from rome_fast.model.loader import LoadedModel, random_model
from tests.test_tokens import TOKENIZER_FAMILIES

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
    got = mean_token_nll(lm.model, lm.tokenizer, PROMPTS, TARGETS, padding_side=side)
    expected = [reference_nll(lm, p, t) for p, t in zip(PROMPTS, TARGETS, strict=True)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_batch_size_does_not_change_scores(lm: LoadedModel) -> None:
    one = mean_token_nll(lm.model, lm.tokenizer, PROMPTS, TARGETS, batch_size=1)
    batched = mean_token_nll(lm.model, lm.tokenizer, PROMPTS, TARGETS)
    np.testing.assert_allclose(batched, one, rtol=1e-5)


class RecordsScoredIds(nn.Module):
    """A stand-in language model (uniform logits) that records the ids it is asked to score."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(vocab), requires_grad=False)
        self.seen: list[list[int]] = []

    def forward(self, input_ids: torch.Tensor, **_: Any) -> Any:
        self.seen.extend(input_ids.tolist())
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))  # (B, T, V)


@pytest.mark.parametrize("spaces", [0, 1, 2])
@pytest.mark.parametrize("family", list(TOKENIZER_FAMILIES))
def test_a_target_is_scored_as_the_edit_writes_it(family: str, spaces: int) -> None:
    """The ids v* is optimized for are the ids the score reads, whatever the leading spaces."""
    tokenizer = TOKENIZER_FAMILIES[family]()
    prompt, target = "{} speaks", " " * spaces + "the French Republic"
    written = build_value_batch(tokenizer, EditRequest(prompt, "Danielle", target), ["{}"])
    model = RecordsScoredIds(len(tokenizer))
    text = prompt.format("Danielle")
    mean_token_nll(model, tokenizer, [text], [target])
    (scored_row,) = model.seen
    scored = scored_row[len(tokenizer(text)["input_ids"]) :]
    assert scored == written.target_ids.tolist(), (family, target)


def test_mismatched_lengths_are_rejected(lm: LoadedModel) -> None:
    with pytest.raises(ValueError, match="pair them up"):
        mean_token_nll(lm.model, lm.tokenizer, PROMPTS, TARGETS[:1])


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
