"""Covariance collection throughput (tokens/s): rome_fast.stats.collect (forward stopped at the
edited module) vs a full forward pass over the same documents (what the public code's
collection costs at least), against the floor of blocks 0..layer−1 plus k kᵀ."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
import torch

from benchmarks.conftest import EditSetup
from benchmarks.floors import Peaks, full_forward_flops, stats_floor
from rome_fast.model.weights import weight_matrix
from rome_fast.stats.collect import collect_second_moment
from rome_fast.stats.corpus import Corpus, from_texts

N_DOCS, WORDS, MAX_LENGTH, BATCH = 16, 160, 128, 8


def corpus() -> Corpus:
    """Seeded word salad: throughput does not depend on what the words say."""
    rng = random.Random(0)
    vocab = [
        "the",
        "of",
        "and",
        "in",
        "to",
        "a",
        "was",
        "is",
        "for",
        "on",
        "as",
        "by",
        "with",
        "from",
        "at",
        "his",
        "that",
        "it",
        "an",
        "were",
        "city",
        "river",
        "king",
        "war",
        "music",
        "film",
        "team",
        "season",
        "album",
        "church",
        "school",
        "village",
    ]
    return from_texts(
        [" ".join(rng.choice(vocab) for _ in range(WORDS)) for _ in range(N_DOCS)],
        name="bench-words",
    )


def documents(setup: EditSetup, texts: Corpus) -> list[list[int]]:
    tok = setup.loaded.tokenizer
    return [list(tok(t, truncation=True, max_length=MAX_LENGTH)["input_ids"]) for t in texts]


def full_forward(setup: EditSetup, docs: list[list[int]]) -> int:
    """Every document through the whole model, logits included; returns the tokens seen."""
    model = setup.loaded.model
    with torch.inference_mode():
        for first in range(0, len(docs), BATCH):
            batch = docs[first : first + BATCH]
            width = max(len(d) for d in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, doc in enumerate(batch):
                ids[row, : len(doc)], mask[row, : len(doc)] = torch.tensor(doc), 1
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    return sum(len(d) for d in docs)


@pytest.mark.parametrize("impl", ["naive", "fast"])
def test_stats_throughput(
    run_bench: Callable[..., Any], peaks: Peaks, model_setup: EditSetup, impl: str
) -> None:
    s = model_setup
    texts = corpus()  # built once, outside the timed call
    docs = documents(s, texts)
    tokens = sum(len(d) for d in docs)
    d_in = int(weight_matrix(s.loaded.adapter.edited_module(s.loaded.model, s.layer)).shape[1])
    if impl == "naive":
        fn: Callable[[], Any] = lambda: full_forward(s, docs)  # noqa: E731
        what = "full forward pass (the baseline the target is stated against)"
    else:
        fn = lambda: collect_second_moment(  # noqa: E731
            s.loaded,
            s.layer,
            texts,
            n_samples=N_DOCS,
            batch_size=BATCH,
            max_length=MAX_LENGTH,
            progress=False,
        )
        what = "collect_second_moment, stopped at the edited module"
    run_bench(
        fn,
        group=f"stats {s.loaded.name} layer {s.layer} ({tokens} tokens)",
        impl=impl,
        rounds=3,
        floor=stats_floor(peaks, s.loaded, s.layer, tokens, d_in),
        describe=lambda _: {},
        tokens=tokens,
        what=what,
        full_forward_flops=full_forward_flops(s.loaded, tokens),
    )
