"""Key statistics sharded over Ray actors (``rome stats --workers N``).

The corpus's first ``n_samples`` documents are cut into contiguous shards of whole sorting
chunks (``stats.SORT_CHUNK_BATCHES`` batches), so that every batch, and so every key, is the
one a single process computes; each actor (one model, one device) returns its partial
Σ k kᵀ in float64 and its token count, and the merge is a sum. The result equals the
single-process statistics to float64 rounding (exactly the same keys, summed in another
order) and goes to the same cache file, written atomically by ``stats.save_npz_stats``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from itertools import islice, pairwise

import torch
from tqdm import tqdm

from rome_fast.infra.cluster import Cluster, actor_factory, connected, fetch, worker_count
from rome_fast.model.context import context_length
from rome_fast.model.linear import onednn_is_faster, pin_onednn
from rome_fast.model.loader import LoadedModel, load_model
from rome_fast.stats import collect as stats
from rome_fast.stats.corpus import Corpus, from_texts


def shard_bounds(n_docs: int, chunk: int, shards: int) -> list[tuple[int, int]]:
    """At most ``shards`` contiguous ``[start, stop)`` ranges covering ``n_docs`` documents,
    each cut at a multiple of ``chunk``, as even as whole chunks allow."""
    n_chunks = -(-n_docs // chunk)
    used = max(1, min(shards, n_chunks))
    cuts = [min(n_docs, (n_chunks * i // used) * chunk) for i in range(used + 1)]
    return [(a, b) for a, b in pairwise(cuts) if b > a]


class StatsWorker:
    """One model on one device (a Ray actor) returning partial sums for document shards."""

    def __init__(
        self, model: str, dtype: torch.dtype, seed: int, onednn: bool, threads: int
    ) -> None:
        pin_onednn(onednn)
        torch.set_num_threads(threads)  # as the driver: the same kernels, the same keys
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.loaded = load_model(model, dtype=dtype, device=device, seed=seed)

    def partial(
        self, layer: int, docs: Sequence[str], batch_size: int, max_length: int
    ) -> stats.SecondMomentStats:
        return stats.collect_second_moment(
            self.loaded,
            layer,
            from_texts(docs, name="shard"),
            n_samples=len(docs),
            dtype=torch.float64,
            batch_size=batch_size,
            max_length=max_length,
            progress=False,
        )


def sharded_collector(
    cluster: Cluster, model: str, model_dtype: torch.dtype, seed: int, shards: int | None = None
) -> Callable[..., stats.SecondMomentStats]:
    """A drop-in for ``stats.collect_second_moment`` that cuts the corpus into ``shards``
    (default: one per worker) and runs them on ``cluster``'s workers, each actor loading
    ``model`` (a ``load_model`` spec) as this process did."""

    def collect(
        loaded: LoadedModel,
        layer: int,
        corpus: Corpus,
        *,
        n_samples: int = stats.PUBLIC_SAMPLE_SIZE,
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
        max_length: int | None = None,
        progress: bool = True,
    ) -> stats.SecondMomentStats:
        length = max_length if max_length is not None else context_length(loaded.model)
        docs = list(islice(iter(corpus), n_samples))
        start = time.perf_counter()
        with connected(cluster) as ray:
            size = worker_count(ray, cluster)
            chunk = batch_size * stats.SORT_CHUNK_BATCHES
            bounds = shard_bounds(len(docs), chunk, shards or size)
            start_actor = actor_factory(ray, StatsWorker, "rome-stats")
            same = (model, model_dtype, seed, onednn_is_faster(), torch.get_num_threads())
            actors = [start_actor(*same) for _ in bounds[:size]]
            try:
                refs = [  # an actor runs its shards one after another
                    actors[i % len(actors)].partial.remote(layer, docs[a:b], batch_size, length)
                    for i, (a, b) in enumerate(bounds)
                ]
                parts = [fetch(ray, ref) for ref in tqdm(refs, desc="shards", disable=not progress)]
            finally:
                for actor in actors:
                    ray.kill(actor)
        return merge(parts, corpus, n_samples, dtype, time.perf_counter() - start)

    return collect


def merge(
    parts: Sequence[stats.SecondMomentStats],
    corpus: Corpus,
    n_samples: int,
    dtype: torch.dtype,
    seconds: float,
) -> stats.SecondMomentStats:
    """The sum of the shards' float64 partial sums, in ``dtype``; provenance as one run's."""
    total = torch.stack([p.sum.to(torch.float64) for p in parts]).sum(0)  # (d_in, d_in)
    tokens = sum(p.count for p in parts)
    first = parts[0].provenance
    provenance = {
        **first,
        "corpus": corpus.identifier,
        "corpus_description": corpus.description,
        "requested_samples": n_samples,
        "documents": sum(p.provenance["documents"] for p in parts),
        "empty_documents_skipped": sum(p.provenance["empty_documents_skipped"] for p in parts),
        "tokens": tokens,
        "dtype": stats.DTYPE_NAMES[dtype],
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
        "shards": len(parts),
        "accumulation": "float64 per shard, summed",
    }
    return stats.SecondMomentStats(total.to(dtype), tokens, n_samples, provenance)
