"""Sharded statistics without Ray: the corpus cut by ``shard_bounds``, each shard's partial sum
computed by a ``StatsWorker`` in this process (what each Ray actor runs), and ``merge``d, equal
the statistics one process collects. Runs in the default suite; the Ray session
(tests/test_distributed.py) runs the same shards on actors."""

from __future__ import annotations

from typing import Any

import torch

from rome_fast.model.linear import onednn_is_faster
from rome_fast.model.loader import random_model
from rome_fast.stats import collect as stats
from rome_fast.stats.corpus import from_texts
from rome_fast.stats.sharded import StatsWorker, merge, shard_bounds
from tests.test_stats import varied_texts

MODEL = "random:tiny-gpt2"
LAYER = 1
BATCH_SIZE = 1  # a sorting chunk of 64 documents: the shards stay small
MAX_LENGTH = 16
N_SHARDS = 3
# Measured: max |merged − whole| / max |Σ k kᵀ| = 4.9e-15 here (1.1e-14 with two documents a
# batch): float64 sums of the same float32 keys in another order. Bound: 20 × the measurement.
MEASURED_ERROR = 4.9e-15
RELATIVE_BOUND = 20 * MEASURED_ERROR


def documents() -> list[str]:
    """Three sorting chunks' worth, short of a few, with empty documents in two shards."""
    texts = varied_texts(N_SHARDS * BATCH_SIZE * stats.SORT_CHUNK_BATCHES - 5)
    texts[3] = texts[100] = ""
    return texts


def test_merged_shards_equal_the_one_process_statistics() -> None:
    loaded = random_model(MODEL.removeprefix("random:"))
    docs = documents()
    corpus = from_texts(docs)
    options: dict[str, Any] = {
        "batch_size": BATCH_SIZE,
        "max_length": MAX_LENGTH,
        "progress": False,
    }
    whole = stats.collect_second_moment(
        loaded, LAYER, corpus, n_samples=len(docs), dtype=torch.float64, **options
    )
    bounds = shard_bounds(len(docs), BATCH_SIZE * stats.SORT_CHUNK_BATCHES, N_SHARDS)
    assert len(bounds) == N_SHARDS
    worker = StatsWorker(MODEL, torch.float32, 0, onednn_is_faster(), torch.get_num_threads())
    parts = [worker.partial(LAYER, docs[a:b], BATCH_SIZE, MAX_LENGTH) for a, b in bounds]
    merged = merge(parts, corpus, len(docs), torch.float64, seconds=1.0)
    error = float((merged.sum - whole.sum).abs().max() / whole.sum.abs().max())
    assert error <= RELATIVE_BOUND, f"max |merged − whole| / max |Σ k kᵀ| = {error:.3g}"
    assert merged.count == whole.count
    assert merged.sample_size == whole.sample_size
    for key in ("documents", "empty_documents_skipped", "tokens", "corpus", "dtype"):
        assert merged.provenance[key] == whole.provenance[key], key
    assert merged.provenance["shards"] == N_SHARDS
