"""CounterFact metric maths (SPEC §5), written to be read. NumPy only.

Every score starts from the *mean per-token NLL* of ``" " + target`` after a prompt
(natural log). Per record:

* ES = [NLL_true > NLL_new] on the rewrite prompt, EM = e^{−NLL_new} − e^{−NLL_true};
* PS, PM: the same on the paraphrase prompts, averaged within the record;
* NS = [NLL_true < NLL_new] on the neighborhood prompts, NM = e^{−NLL_true} − e^{−NLL_new}.

Records are averaged and multiplied by 100; S is the harmonic mean of ES, PS and NS.

Entropies: :func:`ngram_entropy` is in bits over words (the public code's choice);
:func:`normalized_unigram_entropy` divides a natural-log entropy by ``ln |V|``, so the
ratio does not depend on the log base (any base gives the same number).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

RECORD_METRICS = ("ES", "EM", "PS", "PM", "NS", "NM")
TABLE_METRICS = (*RECORD_METRICS, "S")


def _nlls(values: ArrayLike, name: str) -> np.ndarray:
    array = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if array.ndim != 1 or array.size == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D sequence of NLLs, got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds a non-finite NLL: {array.tolist()}")
    return array


def _paired(nll_new: ArrayLike, nll_true: ArrayLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    new = _nlls(nll_new, f"{what} nll_new")
    true = _nlls(nll_true, f"{what} nll_true")
    if new.shape != true.shape:
        raise ValueError(
            f"{what}: nll_new has {new.size} prompts but nll_true has {true.size}; "
            "score both targets on the same prompts"
        )
    return new, true


def success_and_magnitude(nll_new: ArrayLike, nll_true: ArrayLike) -> tuple[float, float]:
    """Means over prompts of [NLL_true > NLL_new] and e^{−NLL_new} − e^{−NLL_true} (ES/EM, PS/PM)"""
    new, true = _paired(nll_new, nll_true, "efficacy/paraphrase")
    return float(np.mean(true > new)), float(np.mean(np.exp(-new) - np.exp(-true)))


def neighborhood_success_and_magnitude(
    nll_new: ArrayLike, nll_true: ArrayLike
) -> tuple[float, float]:
    """Mean of [NLL_true < NLL_new] and of e^{−NLL_true} − e^{−NLL_new} over prompts (NS/NM)."""
    new, true = _paired(nll_new, nll_true, "neighborhood")
    return float(np.mean(true < new)), float(np.mean(np.exp(-true) - np.exp(-new)))


def record_metrics(
    rewrite: tuple[ArrayLike, ArrayLike],
    paraphrase: tuple[ArrayLike, ArrayLike],
    neighborhood: tuple[ArrayLike, ArrayLike],
) -> dict[str, float]:
    """ES, EM, PS, PM, NS, NM of one record as fractions; each argument is (nll_new, nll_true)."""
    es, em = success_and_magnitude(*rewrite)
    ps, pm = success_and_magnitude(*paraphrase)
    ns, nm = neighborhood_success_and_magnitude(*neighborhood)
    return {"ES": es, "EM": em, "PS": ps, "PM": pm, "NS": ns, "NM": nm}


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean of non-negative numbers; 0 when any of them is 0."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0 or np.any(array < 0):
        raise ValueError(f"harmonic mean needs non-negative values, got {list(values)}")
    if np.any(array == 0):
        return 0.0
    return float(array.size / np.sum(1.0 / array))


def aggregate(records: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Average per-record metrics, ×100, and S = harmonic mean of ES, PS, NS."""
    rows = list(records)
    if not rows:
        raise ValueError("aggregate needs at least one record")
    table = {m: 100.0 * float(np.mean([row[m] for row in rows])) for m in RECORD_METRICS}
    table["S"] = harmonic_mean([table["ES"], table["PS"], table["NS"]])
    return table


# Words and punctuation marks, close to nltk.word_tokenize on ordinary English text.
_WORD = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def words(text: str) -> list[str]:
    """Split text into word and punctuation tokens (case kept, as in the public code)."""
    return _WORD.findall(text)


def entropy_bits(counts: Iterable[int]) -> float:
    """Shannon entropy in bits of the distribution proportional to ``counts``."""
    array = np.asarray([c for c in counts if c > 0], dtype=np.float64)
    if array.size == 0:
        return 0.0
    p = array / array.sum()
    return float(-np.sum(p * np.log2(p)))


def ngram_entropy(text: str, n: int) -> float:
    """H_n: entropy in bits of the frequency distribution of word n-grams in ``text``."""
    if n < 1:
        raise ValueError(f"n-gram order must be >= 1, got {n}")
    tokens = words(text)
    grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return entropy_bits(grams.values())


def generation_entropy(texts: Sequence[str]) -> float:
    """The public code's generation entropy: mean over texts of mean(2/3·H₂, 4/3·H₃)."""
    if not texts:
        raise ValueError("generation entropy needs at least one generated text")
    per_text = [np.mean([2 / 3 * ngram_entropy(t, 2), 4 / 3 * ngram_entropy(t, 3)]) for t in texts]
    return float(np.mean(per_text))


def normalized_unigram_entropy(token_ids: Iterable[Iterable[int]], vocab_size: int) -> float:
    """The paper's collapse signal: entropy of the pooled token distribution of the
    generations (ten in the paper) divided by the entropy of the uniform distribution
    over the vocabulary, ln|V| (base-free ratio, in [0, 1])."""
    if vocab_size < 2:
        raise ValueError(f"vocabulary size must be >= 2, got {vocab_size}")
    counts = Counter(int(t) for ids in token_ids for t in ids)
    if any(t < 0 or t >= vocab_size for t in counts):
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got {sorted(counts)[:5]}...")
    return entropy_bits(counts.values()) / float(np.log2(vocab_size))


def normalized_delta_norm(delta: ArrayLike) -> float:
    """|Δ| = ‖ΔW‖_F / number of elements of W (the paper's footnote 2)."""
    array = np.asarray(delta, dtype=np.float64)
    if array.size == 0:
        raise ValueError("ΔW is empty")
    return float(np.linalg.norm(array.ravel()) / array.size)


def rank_one_normalized_norm(left: ArrayLike, right: ArrayLike) -> float:
    """|Δ| of ΔW = left ⊗ right without forming it: ‖left‖·‖right‖ / (d_out·d_in)."""
    u = np.asarray(left, dtype=np.float64).ravel()
    v = np.asarray(right, dtype=np.float64).ravel()
    return float(np.linalg.norm(u) * np.linalg.norm(v) / (u.size * v.size))


def _labels(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    true = np.asarray(y_true).ravel()
    pred = np.asarray(y_pred).ravel()
    if true.shape != pred.shape or true.size == 0:
        raise ValueError(
            f"labels and predictions must be non-empty and aligned: {true.shape} vs {pred.shape}"
        )
    return true, pred


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    true, pred = _labels(y_true, y_pred)
    return float(np.mean(true == pred))


def _confusion(y_true: ArrayLike, y_pred: ArrayLike, positive: int) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) for ``positive``; an unparsed prediction (any other value) never is."""
    true, pred = _labels(y_true, y_pred)
    is_true, is_pred = true == positive, pred == positive
    tp = int(np.sum(is_true & is_pred))
    fp = int(np.sum(~is_true & is_pred))
    fn = int(np.sum(is_true & ~is_pred))
    tn = int(np.sum(~is_true & ~is_pred))
    return tp, fp, fn, tn


def f1_score(y_true: ArrayLike, y_pred: ArrayLike, positive: int = 1) -> float:
    """Binary F1 of the ``positive`` class; 0 when there is no true or predicted positive."""
    tp, fp, fn, _ = _confusion(y_true, y_pred, positive)
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews_corrcoef(y_true: ArrayLike, y_pred: ArrayLike, positive: int = 1) -> float:
    """Binary MCC for ``positive``; 0 when a row or column of the confusion matrix is empty."""
    tp, fp, fn, tn = _confusion(y_true, y_pred, positive)
    denominator = float(np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))))
    return 0.0 if denominator == 0 else (tp * tn - fp * fn) / denominator
