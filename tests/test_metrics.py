"""rome_ref.metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rome_ref import metrics as m


def test_efficacy_by_hand() -> None:
    # new target more likely (lower NLL) than the true one: success, EM = e^-1 - e^-2
    es, em = m.success_and_magnitude([1.0], [2.0])
    assert es == 1.0
    assert em == pytest.approx(math.exp(-1) - math.exp(-2))


def test_paraphrase_averages_within_the_record() -> None:
    ps, pm = m.success_and_magnitude([1.0, 3.0], [2.0, 2.0])
    assert ps == 0.5
    assert pm == pytest.approx(((math.exp(-1) - math.exp(-2)) + (math.exp(-3) - math.exp(-2))) / 2)


def test_neighborhood_success_is_the_true_target_staying_ahead() -> None:
    ns, nm = m.neighborhood_success_and_magnitude([3.0, 1.0], [1.0, 2.0])
    assert ns == 0.5
    assert nm == pytest.approx(((math.exp(-1) - math.exp(-3)) + (math.exp(-2) - math.exp(-1))) / 2)


def test_ties_are_neither_success() -> None:
    assert m.success_and_magnitude([1.0], [1.0])[0] == 0.0
    assert m.neighborhood_success_and_magnitude([1.0], [1.0])[0] == 0.0


def test_aggregate_is_mean_times_100_and_harmonic_score() -> None:
    rows = [
        {"ES": 1.0, "EM": 0.5, "PS": 1.0, "PM": 0.2, "NS": 0.5, "NM": 0.1},
        {"ES": 0.0, "EM": -0.1, "PS": 0.5, "PM": 0.0, "NS": 1.0, "NM": 0.0},
    ]
    table = m.aggregate(rows)
    assert table["ES"] == pytest.approx(50.0)
    assert table["EM"] == pytest.approx(20.0)
    assert table["PS"] == pytest.approx(75.0)
    assert table["NS"] == pytest.approx(75.0)
    assert table["S"] == pytest.approx(3 / (1 / 50 + 1 / 75 + 1 / 75))


def test_harmonic_mean_with_a_zero_is_zero() -> None:
    assert m.harmonic_mean([0.0, 50.0, 100.0]) == 0.0


def test_record_metrics_rejects_mismatched_prompts() -> None:
    with pytest.raises(ValueError, match="same prompts"):
        m.record_metrics(([1.0], [2.0]), ([1.0, 2.0], [1.0]), ([1.0], [1.0]))


def test_record_metrics_rejects_nan() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        m.record_metrics(([float("nan")], [2.0]), ([1.0], [1.0]), ([1.0], [1.0]))


def test_ngram_entropy_by_hand() -> None:
    # "a b a b": bigrams (a,b) twice and (b,a) once -> H = -(2/3 log2 2/3 + 1/3 log2 1/3)
    expected = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert m.ngram_entropy("a b a b", 2) == pytest.approx(expected)
    assert m.ngram_entropy("a a a a", 1) == 0.0
    assert m.ngram_entropy("one two three four", 1) == pytest.approx(2.0)


def test_words_split_punctuation() -> None:
    assert m.words("Paris, France's capital.") == ["Paris", ",", "France's", "capital", "."]


def test_generation_entropy_weights_bigrams_and_trigrams() -> None:
    text = "w1 w2 w3 w4 w5"  # 4 distinct bigrams (2 bits), 3 distinct trigrams (log2 3)
    expected = (2 / 3 * 2.0 + 4 / 3 * math.log2(3)) / 2
    assert m.generation_entropy([text, "x x x x"]) == pytest.approx((expected + 0.0) / 2)


def test_normalized_unigram_entropy_pools_generations() -> None:
    # tokens 0,1,2,3 once each over two generations: 2 bits; / log2(16) = 4 bits
    assert m.normalized_unigram_entropy([[0, 1], [2, 3]], 16) == pytest.approx(0.5)
    assert m.normalized_unigram_entropy([[5, 5, 5]], 16) == 0.0


def test_normalized_delta_norm() -> None:
    delta = np.array([[3.0, 0.0], [0.0, 4.0]])
    assert m.normalized_delta_norm(delta) == pytest.approx(5.0 / 4)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-10, 10), min_size=1, max_size=6),
    st.lists(st.floats(-10, 10), min_size=1, max_size=6),
)
def test_rank_one_norm_matches_dense(left: list[float], right: list[float]) -> None:
    dense = m.normalized_delta_norm(np.outer(left, right))
    assert m.rank_one_normalized_norm(left, right) == pytest.approx(dense, rel=1e-9, abs=1e-12)


def test_classification_metrics_by_hand() -> None:
    gold = [1, 1, 0, 0, 1]
    pred = [1, 0, 0, 1, -1]  # the last answer was not parsed
    # tp=1 fp=1 fn=2 tn=1
    assert m.accuracy(gold, pred) == pytest.approx(2 / 5)
    assert m.f1_score(gold, pred) == pytest.approx(2 * 1 / (2 * 1 + 1 + 2))
    assert m.matthews_corrcoef(gold, pred) == pytest.approx(
        (1 * 1 - 1 * 2) / math.sqrt(2 * 3 * 2 * 3)
    )


def test_mcc_of_a_constant_predictor_is_zero() -> None:
    assert m.matthews_corrcoef([0, 1, 1], [1, 1, 1]) == 0.0
