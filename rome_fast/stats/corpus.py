"""Text sources for the key statistics (SPEC §3, "Covariance C").

A :class:`Corpus` is a named, re-iterable stream of documents with a stable
``identifier`` that goes into the statistics' cache key. Sources:

* :func:`wikitext` — the tokenized WikiText files (``<unk>``, `` @-@ ``), split into articles
  at their `` = Title = `` headings (or into paragraphs), optionally detokenized;
* :func:`text_files` — a user's own plain-text files (one document per file, paragraph or line);
* :func:`hf_dataset` — a Hugging Face dataset already on this machine (never downloaded);
* :func:`embedded_wikitext` — the opening of each WikiText-2 article, shipped in the package
  (``rome_fast/stats/data/``, CC BY-SA 3.0, docs/DATA.md): real text with no data folder;
* :func:`model_samples` — text sampled from the model itself, seeded, when nothing else exists.

:func:`default_corpus` picks WikiText-2 from the data folder when present, else the shipped
openings, else model samples.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from tqdm.auto import tqdm

from rome_fast.infra.datadir import default_data_dir

if TYPE_CHECKING:
    from rome_fast.model.loader import LoadedModel

log = logging.getLogger(__name__)

WIKITEXT_DIR = "wikitext-2"
WIKITEXT_SPLITS = ("valid", "test")
# The shipped excerpt: the first OPENING_CHARS characters of every article of WikiText-2 valid
# and test, in the tokenized release form (built by `article_openings`; docs/DATA.md). 2,000
# characters hold more than SmolLM2's 256-token window (mom2_max_length) of every article
# (docs/results/embedded-corpus.md), so its C equals the full files' C.
EMBEDDED_WIKITEXT = Path(__file__).parent / "data" / "wikitext-2-openings.txt.gz"
OPENING_CHARS = 2000

# An article title is a line " = Title = "; sections are " = = Section = = " and deeper.
_ARTICLE_HEADING = re.compile(r"^ = [^=].* = $")
# WikiText's tokenization: " @-@ " for "-", " @,@ " for ",", " @.@ " for "." inside numbers,
# and spaces before punctuation.
_DETOKENIZE = (
    (re.compile(r" @(.)@ "), r"\1"),
    (re.compile(r" ([.,;:!?)\]'])"), r"\1"),
    (re.compile(r"([(\[]) "), r"\1"),
    (re.compile(r" (n't|'s|'re|'ve|'m|'ll|'d)\b"), r"\1"),
)


@dataclass(frozen=True)
class Corpus:
    """A re-iterable stream of documents (strings) with a stable identifier.

    ``identifier`` changes whenever the documents could: it names the source, its options and
    a hash of the content (or of the seed and model for sampled text).
    """

    identifier: str
    description: str
    open: Callable[[], Iterable[str]] = field(repr=False, compare=False)
    size: int | None = None  # number of documents, when known without reading them

    def __iter__(self) -> Iterator[str]:
        return iter(self.open())


def _content_hash(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(hashlib.sha256(chunk).digest())
    return digest.hexdigest()[:16]


def _from_texts(identifier: str, description: str, texts: Sequence[str]) -> Corpus:
    frozen = tuple(texts)
    return Corpus(identifier, description, lambda: frozen, len(frozen))


def from_texts(texts: Sequence[str], *, name: str = "texts") -> Corpus:
    """An in-memory corpus; its identifier hashes the texts."""
    digest = _content_hash(t.encode() for t in texts)
    return _from_texts(f"{name}:{digest}", f"{len(texts)} in-memory texts ({name})", texts)


def detokenize_wikitext(text: str) -> str:
    """Undo WikiText's tokenization (`` @-@ `` → ``-``, `` , `` → ``,``, ...); keeps ``<unk>``."""
    for pattern, replacement in _DETOKENIZE:
        text = pattern.sub(replacement, text)
    return text


def split_wikitext(text: str, unit: Literal["article", "paragraph"] = "article") -> list[str]:
    """Split raw WikiText into articles (at `` = Title = `` lines) or non-empty paragraphs.

    An article keeps its title and section headings as they are in the file; text before the
    first title (none in the released files) is dropped.
    """
    lines = text.splitlines()
    if unit == "paragraph":
        return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("= ")]
    if unit != "article":
        raise ValueError(f"unit must be 'article' or 'paragraph', got {unit!r}")
    articles: list[list[str]] = []
    for line in lines:
        if _ARTICLE_HEADING.match(line):
            articles.append([])
        if articles and line.strip():
            articles[-1].append(line.strip())
    return ["\n".join(article) for article in articles]


def article_openings(text: str, chars: int = OPENING_CHARS) -> str:
    """Raw WikiText holding the first ``chars`` characters of each article of ``text``, in the
    same form: ``split_wikitext`` of the result gives each article of ``text`` cut to ``chars``
    characters (its lines stripped, as ``split_wikitext`` gives them)."""
    openings = (article[:chars] for article in split_wikitext(text, "article"))
    # " line " per line: split_wikitext strips it back and finds the " = Title = " headings.
    return "".join(f" {line} \n" for opening in openings for line in opening.splitlines())


def embedded_wikitext(path: str | os.PathLike[str] = EMBEDDED_WIKITEXT) -> Corpus:
    """The opening of each WikiText-2 (valid+test) article shipped with the package, detokenized
    (gzip-compressed raw WikiText; see :data:`EMBEDDED_WIKITEXT`)."""
    raw = gzip.decompress(Path(path).read_bytes()).decode("utf-8")
    documents = [detokenize_wikitext(doc) for doc in split_wikitext(raw, "article")]
    identifier = f"wikitext-openings:{OPENING_CHARS}:{_content_hash([raw.encode()])}"
    description = (
        f"WikiText-2 valid+test, the first {OPENING_CHARS} characters of its "
        f"{len(documents)} articles (shipped with rome-verify)"
    )
    return _from_texts(identifier, description, documents)


def wikitext(
    path: str | os.PathLike[str] | None = None,
    *,
    splits: Sequence[str] = WIKITEXT_SPLITS,
    unit: Literal["article", "paragraph"] = "article",
    detokenize: bool = True,
) -> Corpus:
    """WikiText in its tokenized release form: ``{path}/{split}.txt`` for each split.

    ``path`` defaults to ``<data dir>/wikitext-2`` (``rome_fast.infra.datadir.default_data_dir``).
    """
    folder = Path(path) if path is not None else default_data_dir() / WIKITEXT_DIR
    files = [folder / f"{split}.txt" for split in splits]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"WikiText file(s) not found: {', '.join(missing)}; pass the folder holding "
            f"{', '.join(f'{s}.txt' for s in splits)} (e.g. --stats-corpus FOLDER) or set "
            f"ROME_DATA_DIR to a folder with {WIKITEXT_DIR}/ in it"
        )
    raw = [f.read_text(encoding="utf-8") for f in files]
    documents = [doc for text in raw for doc in split_wikitext(text, unit)]
    if detokenize:
        documents = [detokenize_wikitext(doc) for doc in documents]
    digest = _content_hash(text.encode() for text in raw)
    identifier = f"wikitext:{folder.name}:{'+'.join(splits)}:{unit}:detok={detokenize}:{digest}"
    description = f"WikiText {folder.name} {'+'.join(splits)}, {len(documents)} {unit}s"
    return _from_texts(identifier, description, documents)


def text_files(
    paths: Sequence[str | os.PathLike[str]],
    *,
    unit: Literal["file", "paragraph", "line"] = "file",
) -> Corpus:
    """A user's plain-text files: one document per file, per blank-line paragraph or per line."""
    if not paths:
        raise ValueError("text_files needs at least one path")
    files = [Path(p) for p in paths]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"text file(s) not found: {', '.join(missing)}")
    if unit not in ("file", "paragraph", "line"):
        raise ValueError(f"unit must be 'file', 'paragraph' or 'line', got {unit!r}")
    raw = [f.read_text(encoding="utf-8") for f in files]
    documents: list[str] = []
    for text in raw:
        if unit == "file":
            pieces = [text]
        elif unit == "paragraph":
            pieces = re.split(r"\n\s*\n", text)
        else:
            pieces = text.splitlines()
        documents.extend(p.strip() for p in pieces if p.strip())
    digest = _content_hash(text.encode() for text in raw)
    names = "+".join(f.name for f in files)
    return _from_texts(
        f"files:{unit}:{digest}", f"{len(documents)} {unit}s from {names}", documents
    )


def hf_dataset(
    name_or_path: str,
    *,
    config: str | None = None,
    split: str = "train",
    text_field: str = "text",
) -> Corpus:
    """A Hugging Face dataset that is already on this machine (``save_to_disk`` folder or cache).

    Nothing is downloaded: the hub is switched to offline mode before ``datasets`` is imported.
    """
    if importlib.util.find_spec("datasets") is None:
        raise ImportError(
            "reading a Hugging Face dataset needs the 'datasets' package (pip install datasets); "
            "or use corpus.text_files(...) / corpus.wikitext(...) on local text"
        )
    # Read when datasets is first imported; this process never downloads.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    try:
        if Path(name_or_path).is_dir():
            ds: Any = datasets.load_from_disk(name_or_path)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name_or_path, config, split=split)
    except Exception as err:  # datasets raises many types for "not available offline"
        raise FileNotFoundError(
            f"dataset {name_or_path!r} (config {config!r}, split {split!r}) is not available "
            f"offline: save it with datasets' save_to_disk where there is network and pass that "
            f"folder ({type(err).__name__}: {err})"
        ) from err
    if text_field not in ds.column_names:
        raise ValueError(
            f"dataset {name_or_path!r} has no column {text_field!r}; its columns "
            f"are {ds.column_names}; pass text_field="
        )
    fingerprint = getattr(ds, "_fingerprint", "unknown")
    identifier = f"hf:{name_or_path}:{config}:{split}:{text_field}:{fingerprint}"

    def texts() -> Iterator[str]:
        for row in ds:
            yield row[text_field]

    return Corpus(identifier, f"Hugging Face dataset {name_or_path} ({split})", texts, len(ds))


def sample_texts(
    loaded: LoadedModel,
    *,
    n_texts: int,
    n_tokens: int,
    seed: int,
    top_k: int = 50,
    batch_size: int = 32,
) -> list[str]:
    """``n_texts`` texts of ``n_tokens`` new tokens sampled (top-k) from the start token.

    Uses its own ``torch.Generator`` so it neither reads nor moves the global RNG.
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start sampling from")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    texts: list[str] = []
    # Counts tokens, not texts: a batch of texts finishes all at once, after n_tokens steps.
    bar = tqdm(total=n_texts * n_tokens, desc=f"sampling texts from {loaded.name}", unit="tok")
    with torch.inference_mode(), bar:
        for first in range(0, n_texts, batch_size):
            rows = min(batch_size, n_texts - first)
            ids = torch.full((rows, 1), start, dtype=torch.long, device=loaded.device)
            kv_cache = None
            step_ids = ids
            for _ in range(n_tokens):
                out = model(input_ids=step_ids, cache=kv_cache, use_cache=True)
                kv_cache = out.cache
                logits = out.logits[:, -1, :].float().cpu()  # (rows, vocab)
                top_logits, top_ids = logits.topk(top_k, dim=-1)
                choice = torch.multinomial(top_logits.softmax(-1), 1, generator=generator)
                step_ids = top_ids.gather(-1, choice).to(loaded.device)  # (rows, 1)
                ids = torch.cat([ids, step_ids], dim=1)
                bar.update(rows)
            texts.extend(tokenizer.batch_decode(ids[:, 1:], skip_special_tokens=True))
    return texts


def model_samples(
    loaded: LoadedModel,
    *,
    n_texts: int = 128,
    n_tokens: int = 128,
    seed: int = 0,
    top_k: int = 50,
) -> Corpus:
    """Text sampled from the model itself (seeded), for when no corpus is available.

    Sampling is deferred to the first iteration, so a cache hit never generates.
    """
    cache: list[str] = []

    def texts() -> list[str]:
        if not cache:
            cache.extend(
                sample_texts(loaded, n_texts=n_texts, n_tokens=n_tokens, seed=seed, top_k=top_k)
            )
        return cache

    identifier = f"model-samples:{loaded.name}:n={n_texts}:len={n_tokens}:top_k={top_k}:seed={seed}"
    description = (
        f"{n_texts} texts of {n_tokens} tokens sampled from {loaded.name} "
        f"(top-k {top_k}, seed {seed})"
    )
    return Corpus(identifier, description, texts, n_texts)


def default_corpus(loaded: LoadedModel) -> Corpus:
    """WikiText-2 (valid+test articles) from the data folder if present, else the article
    openings shipped in the package, else (a package without them) model samples; one line
    says which."""
    folder = default_data_dir() / WIKITEXT_DIR
    if all((folder / f"{split}.txt").is_file() for split in WIKITEXT_SPLITS):
        corpus = wikitext(folder)
    elif EMBEDDED_WIKITEXT.is_file():
        corpus = embedded_wikitext()
    else:
        corpus = model_samples(loaded)
        log.warning(
            "key statistics from text sampled from the model: no %s under %s and no shipped "
            "excerpt at %s (set ROME_DATA_DIR or pass --stats-corpus)",
            WIKITEXT_DIR,
            folder,
            EMBEDDED_WIKITEXT,
        )
    log.info("key statistics corpus: %s", corpus.description)
    return corpus
