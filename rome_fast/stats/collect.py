"""Key statistics: the uncentered second moment C = E[k kᵀ] of the edited module's input.

SPEC §3 ("Covariance C"): every non-pad token of every document (truncated to the context
length), accumulated in float32 by default, no regularization. As in the public code, the
editor uses the *mean* ``C = Σ k kᵀ / count`` (``SecondMoment.moment()``); the files store the
sum. The update is invariant to scaling C, but the mean keeps C comparable across corpora.

Collection streams the corpus in length-sorted batches and stops every forward pass at the
edited module, so no block above it is computed; float32 linear layers go through oneDNN where
that is the faster CPU kernel (``rome_fast.model.linear``). Results are cached on disk
(atomically) under ``datadir.cache_dir()/stats`` and can be read from, and written to, the
public ``.npz`` format::

    {stats_dir}/{model}/wikipedia_stats/{module}_{dtype}_mom2_{n}.npz
    keys: mom2.mom2 (d×d sum of k kᵀ), mom2.count, mom2.constructor, sample_size
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from rome_fast.infra.datadir import cache_dir
from rome_fast.infra.npz import NPZ_ERRORS, read_npz
from rome_fast.model.context import context_length
from rome_fast.model.hooks import capture, run_until
from rome_fast.model.linear import onednn_linears
from rome_fast.model.loader import LoadedModel
from rome_fast.model.tokens import pad_id
from rome_fast.stats import corpus as corpora
from rome_fast.stats.corpus import Corpus

log = logging.getLogger(__name__)

PUBLIC_CONSTRUCTOR = "util.runningstats.SecondMoment()"
PUBLIC_CORPUS = "wikipedia"
PUBLIC_SAMPLE_SIZE = 100_000
PROVENANCE_KEY = "rome_verify.provenance"  # extra key; the public loader ignores it
DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}
# Documents tokenized and length-sorted together: big enough to make batches of similar length,
# small enough to keep memory flat on a 100,000-article corpus.
SORT_CHUNK_BATCHES = 64


@dataclass
class SecondMomentStats:
    """Σ k kᵀ over ``count`` tokens of ``sample_size`` requested documents, with provenance."""

    sum: Tensor  # (d_in, d_in), Σ k kᵀ
    count: int  # tokens
    sample_size: int  # documents requested (the public code's ``sample_size``)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def d_in(self) -> int:
        return int(self.sum.shape[0])

    def mean(self) -> Tensor:
        """C = Σ k kᵀ / count, the public code's ``mom2.moment()``."""
        if self.count <= 0:
            raise ValueError("these statistics hold no tokens (count = 0); the corpus was empty")
        return self.sum / self.count


# ----------------------------------------------------------------------------- npz format


def save_npz_stats(stats: SecondMomentStats, path: str | os.PathLike[str]) -> Path:
    """Write ``stats`` in the public ``.npz`` format, atomically (temp file, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        "mom2.constructor": np.array(PUBLIC_CONSTRUCTOR),
        "mom2.count": np.array(stats.count, dtype=np.int64),
        "mom2.mom2": stats.sum.detach().cpu().numpy(),
        "sample_size": np.array(stats.sample_size, dtype=np.int64),
        PROVENANCE_KEY: np.array(json.dumps(stats.provenance, sort_keys=True, default=str)),
    }
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as handle:  # a file object: np.savez adds no suffix
            np.savez(handle, **arrays)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def load_npz_stats(path: str | os.PathLike[str]) -> SecondMomentStats:
    """Read second moments written by the public ROME code or by :func:`save_npz_stats`."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"statistics file {source} does not exist")
    try:
        arrays = read_npz(source)
    except NPZ_ERRORS as err:
        raise ValueError(
            f"{source} is not a readable .npz statistics file ({type(err).__name__}: {err}); "
            "it is empty, truncated or not a .npz: pass a complete file, or omit it to "
            "compute the statistics"
        ) from None
    missing = [key for key in ("mom2.mom2", "mom2.count") if key not in arrays]
    if missing:
        raise ValueError(
            f"{source} lacks {', '.join(missing)}: expected a public ROME second-"
            f"moment file (keys mom2.mom2, mom2.count, sample_size); it has "
            f"{sorted(arrays)}"
        )
    mom2 = arrays["mom2.mom2"]
    if mom2.ndim != 2 or mom2.shape[0] != mom2.shape[1]:
        raise ValueError(
            f"{source}: mom2.mom2 must be a square (d, d) matrix, got shape {mom2.shape}"
        )
    if arrays["mom2.count"].size != 1:
        raise ValueError(
            f"{source}: mom2.count must be one number (the token count), got an array of "
            f"shape {arrays['mom2.count'].shape}"
        )
    count = int(arrays["mom2.count"].reshape(()))
    if count <= 0:
        raise ValueError(f"{source}: mom2.count is {count}; the statistics hold no tokens")
    sample_size = int(arrays["sample_size"]) if "sample_size" in arrays else -1
    provenance: dict[str, Any] = {"file": str(source)}
    if PROVENANCE_KEY in arrays:
        provenance = {**json.loads(str(arrays[PROVENANCE_KEY])), "file": str(source)}
    return SecondMomentStats(torch.from_numpy(mom2.copy()), count, sample_size, provenance)


def check_stats_provenance(stats: SecondMomentStats, module_name: str) -> None:
    """A file that names the module it was computed at must name ``module_name``; a file
    without provenance (the public code's) has only its shape checked."""
    recorded = stats.provenance.get("module")
    if recorded is not None and recorded != module_name:
        source = stats.provenance.get("file", "these statistics")
        raise ValueError(
            f"{source} was computed at {recorded} (layer {stats.provenance.get('layer')}), "
            f"but the edit is at {module_name}; pass the file for that module, or omit it "
            "to compute one"
        )


def check_stats_shape(stats: SecondMomentStats, d_in: int, what: str) -> None:
    """Raise a ValueError unless ``stats`` are (d_in, d_in) for the edited module ``what``."""
    if stats.d_in != d_in:
        source = stats.provenance.get("file", "these statistics")
        raise ValueError(
            f"{source} holds a {stats.d_in}×{stats.d_in} second moment, but the edited module "
            f"{what} has d_in = {d_in}: the file is for another model or layer; pass the file "
            f"computed for this module (a {d_in}×{d_in} mom2.mom2), or omit it to compute one"
        )


def public_stats_path(
    stats_dir: str | os.PathLike[str],
    model_name: str,
    module_name: str,
    dtype: torch.dtype,
    sample_size: int,
    corpus_name: str = PUBLIC_CORPUS,
) -> Path:
    """``{stats_dir}/{model}/{corpus}_stats/{module}_{dtype}_mom2_{n}.npz`` (the public layout)."""
    file = f"{module_name}_{_dtype_name(dtype)}_mom2_{sample_size}.npz"
    return Path(stats_dir) / model_name.replace("/", "_") / f"{corpus_name}_stats" / file


# ----------------------------------------------------------------------------- collection


def _dtype_name(dtype: torch.dtype) -> str:
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"accumulation dtype must be torch.float32 or torch.float64, got {dtype}")
    return DTYPE_NAMES[dtype]


def _tokenize(loaded: LoadedModel, texts: list[str], max_length: int) -> list[list[int]]:
    encoded = loaded.tokenizer(texts, truncation=True, max_length=max_length)
    return [list(ids) for ids in encoded["input_ids"]]


def _pad(loaded: LoadedModel, docs: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Pad to the longest document on the tokenizer's padding side: (ids, mask), (b, s)."""
    width = max(len(d) for d in docs)
    ids = torch.full((len(docs), width), pad_id(loaded.tokenizer), dtype=torch.long)
    mask = torch.zeros((len(docs), width), dtype=torch.long)
    left = loaded.tokenizer.padding_side == "left"
    for row, doc in enumerate(docs):
        cols = slice(width - len(doc), width) if left else slice(0, len(doc))
        ids[row, cols] = torch.tensor(doc)
        mask[row, cols] = 1
    return ids, mask


def _batches(
    loaded: LoadedModel, texts: Iterator[str], batch_size: int, max_length: int
) -> Iterator[list[list[int]]]:
    """Token-id batches; documents are sorted by length within chunks to cut padding."""
    chunk_size = batch_size * SORT_CHUNK_BATCHES
    while chunk := list(islice(texts, chunk_size)):
        docs = sorted(_tokenize(loaded, chunk, max_length), key=len)
        for first in range(0, len(docs), batch_size):
            yield docs[first : first + batch_size]


def collect_second_moment(
    loaded: LoadedModel,
    layer: int,
    corpus: Corpus,
    *,
    n_samples: int = PUBLIC_SAMPLE_SIZE,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
) -> SecondMomentStats:
    """Stream Σ k kᵀ over the non-pad tokens of the first ``n_samples`` documents of ``corpus``.

    Empty documents (no tokens) are skipped and counted in the provenance.
    """
    _dtype_name(dtype)
    if n_samples < 1 or batch_size < 1:
        raise ValueError(
            f"n_samples and batch_size must be positive, got {n_samples}, {batch_size}"
        )
    model, site = loaded.model, loaded.adapter.edited_site(loaded.model, layer)
    d_in = site.d_in
    length = max_length if max_length is not None else context_length(loaded.model)
    total = min(n_samples, corpus.size) if corpus.size is not None else n_samples
    running = torch.zeros(d_in, d_in, dtype=dtype, device=loaded.device)
    tokens = documents = empty = 0
    start = time.perf_counter()
    bar = tqdm(
        total=total,
        desc=f"C at {site.module_name}",
        unit="doc",
        disable=not progress,
    )
    texts = islice(iter(corpus), n_samples)
    with (
        torch.inference_mode(),
        onednn_linears(model),
        capture(site.module, stop=True) as seen,
        bar,
    ):
        for docs in _batches(loaded, texts, batch_size, length):
            bar.update(len(docs))
            nonempty = [d for d in docs if d]
            empty += len(docs) - len(nonempty)
            if not nonempty:
                continue
            ids, mask = _pad(loaded, nonempty)
            # Positions count real tokens only, so left padding leaves every key unchanged.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            run_until(
                model,
                input_ids=ids.to(loaded.device),
                attention_mask=mask.to(loaded.device),
                position_ids=positions.to(loaded.device),
                use_cache=False,
            )
            assert seen.input is not None
            keys = seen.input[mask.to(seen.input.device).bool()].to(dtype)  # (n_tok, d_in)
            running.addmm_(keys.T, keys)
            tokens += keys.shape[0]
            documents += len(nonempty)
    seconds = time.perf_counter() - start
    if tokens == 0:
        raise ValueError(f"corpus {corpus.description} gave no tokens: nothing to estimate C from")
    if documents + empty < n_samples:
        log.warning(
            "asked for %d documents but %s has only %d; C uses all of them",
            n_samples,
            corpus.description,
            documents + empty,
        )
    provenance = {
        "model": loaded.name,
        "module": site.module_name,
        "layer": layer,
        "corpus": corpus.identifier,
        "corpus_description": corpus.description,
        "requested_samples": n_samples,
        "documents": documents,
        "empty_documents_skipped": empty,
        "tokens": tokens,
        "max_length": length,
        "dtype": _dtype_name(dtype),
        "batch_size": batch_size,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
    }
    return SecondMomentStats(running.cpu(), tokens, n_samples, provenance)


# ----------------------------------------------------------------------------- cache


def model_fingerprint(loaded: LoadedModel, layer: int) -> str:
    """Hash of every parameter the keys at ``layer`` can depend on.

    Blocks above the edited layer, the edited module itself, the final norm and an untied
    unembedding are left out, so editing the layer (or any layer above) keeps its statistics.
    """
    adapter = loaded.adapter
    prefix = adapter.layers_path + "."
    edited = adapter.edited_module_name(layer) + "."
    digest = hashlib.sha256()
    for name, param in loaded.model.named_parameters():  # tied weights appear once
        if name.startswith(prefix) and int(name[len(prefix) :].split(".")[0]) > layer:
            continue
        if name.startswith((edited, adapter.final_norm_path + ".", "lm_head.")):
            continue
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:48]


def cache_path(
    loaded: LoadedModel,
    layer: int,
    corpus: Corpus,
    n_samples: int,
    dtype: torch.dtype,
    max_length: int,
    stats_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Where the statistics for this (model weights, module, corpus, n, dtype, length) live."""
    root = Path(stats_dir) if stats_dir is not None else cache_dir() / "stats"
    model_dir = f"{_slug(loaded.name)}-{model_fingerprint(loaded, layer)}"
    corpus_key = hashlib.sha256(f"{corpus.identifier}|len={max_length}".encode()).hexdigest()
    corpus_name = f"{_slug(corpus.identifier.split(':')[0])}-{corpus_key[:12]}"
    module_name = loaded.adapter.edited_module_name(layer)
    return public_stats_path(root, model_dir, module_name, dtype, n_samples, corpus_name)


def _public_candidates(
    loaded: LoadedModel,
    layer: int,
    stats_dir: str | os.PathLike[str],
    dtype: torch.dtype,
    n_samples: int,
) -> list[Path]:
    """Public-layout files a user may already have for this model and module."""
    config_name = str(getattr(loaded.model.config, "_name_or_path", "") or "")
    names = dict.fromkeys(n for n in (loaded.name, config_name, Path(config_name).name) if n)
    module_name = loaded.adapter.edited_module_name(layer)
    return [public_stats_path(stats_dir, name, module_name, dtype, n_samples) for name in names]


def layer_stats(  # noqa: PLR0913  keyword-only: the options of `rome stats`, one by one
    loaded: LoadedModel,
    layer: int,
    *,
    corpus: Corpus | None = None,
    n_samples: int = PUBLIC_SAMPLE_SIZE,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 16,
    max_length: int | None = None,
    stats_dir: str | os.PathLike[str] | None = None,
    npz_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
    collect: Callable[..., SecondMomentStats] | None = None,
) -> SecondMomentStats:
    """The statistics for ``layer``: from ``npz_path``, a public file, the cache, or computed
    (by ``collect``, a drop-in for :func:`collect_second_moment` such as the sharded one of
    ``rome_fast.stats.sharded``).

    Order: an explicit ``npz_path``; with ``stats_dir`` and no ``corpus``, a public-layout file
    ``{stats_dir}/{model}/wikipedia_stats/...`` the user already has; the cache (under
    ``stats_dir`` if given, else ``cache_dir()/stats``); else collect and write the cache.
    """
    site = loaded.adapter.edited_site(loaded.model, layer)

    def load_checked(path: str | os.PathLike[str]) -> SecondMomentStats:
        stats = load_npz_stats(path)
        check_stats_shape(stats, site.d_in, site.module_name)
        check_stats_provenance(stats, site.module_name)
        return stats

    if npz_path is not None:
        return load_checked(npz_path)
    if stats_dir is not None and corpus is None:
        for path in _public_candidates(loaded, layer, stats_dir, dtype, n_samples):
            if path.is_file():
                log.info("using the user's statistics file %s", path)
                return load_checked(path)
    corpus = corpus if corpus is not None else corpora.default_corpus(loaded)
    length = max_length if max_length is not None else context_length(loaded.model)
    path = cache_path(loaded, layer, corpus, n_samples, dtype, length, stats_dir)
    if path.is_file():
        log.info("loading cached statistics %s (%s)", path, corpus.description)
        try:
            return load_checked(path)
        except ValueError as err:
            # A cache file is ours to replace: keep the bad one aside for inspection.
            aside = set_aside(path)
            log.warning("cached statistics unreadable (%s); moved to %s, recomputing", err, aside)
    stats = (collect or collect_second_moment)(
        loaded,
        layer,
        corpus,
        n_samples=n_samples,
        dtype=dtype,
        batch_size=batch_size,
        max_length=length,
        progress=progress,
    )
    save_npz_stats(stats, path)
    stats.provenance["file"] = str(path)
    log.info("wrote statistics %s: %d tokens from %s", path, stats.count, corpus.description)
    return stats


def set_aside(path: Path) -> Path:
    """Rename a damaged file to ``<name>.corrupt-<unix time>`` next to it."""
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    path.replace(aside)
    return aside


def layer_second_moment(  # noqa: PLR0913  keyword-only: as layer_stats
    loaded: LoadedModel,
    layer: int,
    *,
    corpus: Corpus | None = None,
    n_samples: int = PUBLIC_SAMPLE_SIZE,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 16,
    max_length: int | None = None,
    stats_dir: str | os.PathLike[str] | None = None,
    npz_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
    collect: Callable[..., SecondMomentStats] | None = None,
) -> Tensor:
    """C = E[k kᵀ] (d_in, d_in) at the edited module of ``layer``: the mean, in ``dtype``.

    See :func:`layer_stats` for where it comes from; the defaults follow the public code
    (100,000 documents, float32, truncation at the context length) on the default corpus.
    """
    stats = layer_stats(
        loaded,
        layer,
        corpus=corpus,
        n_samples=n_samples,
        dtype=dtype,
        batch_size=batch_size,
        max_length=max_length,
        stats_dir=stats_dir,
        npz_path=npz_path,
        progress=progress,
        collect=collect,
    )
    return stats.mean().to(dtype)
