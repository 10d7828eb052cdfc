"""Metamorphic properties of the CounterFact metrics and gates over synthetic NLL tables.

Tables are built well posed: the two NLLs of every prompt differ by at least ``GAP`` (so no
comparison is a tie), unless a property is about ties.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from rome_fast.eval.gates import compare
from rome_ref import metrics as ref

GAP = 1e-3
GROUPS = ("rewrite", "paraphrase", "neighborhood")
MOVES = {"rewrite": ("ES", "EM"), "paraphrase": ("PS", "PM"), "neighborhood": ("NS", "NM")}

nll = st.floats(0.0, 20.0, allow_nan=False)


@st.composite
def prompt_pair(draw: st.DrawFn) -> tuple[float, float]:
    """(nll_new, nll_true) at least GAP apart, in either order."""
    low = draw(nll)
    high = low + draw(st.floats(GAP, 10.0))
    return (low, high) if draw(st.booleans()) else (high, low)


@st.composite
def group(draw: st.DrawFn, max_prompts: int) -> tuple[list[float], list[float]]:
    pairs = draw(st.lists(prompt_pair(), min_size=1, max_size=max_prompts))
    return [p[0] for p in pairs], [p[1] for p in pairs]


@st.composite
def record(draw: st.DrawFn) -> dict[str, tuple[list[float], list[float]]]:
    return {
        "rewrite": draw(group(1)),
        "paraphrase": draw(group(3)),
        "neighborhood": draw(group(6)),
    }


records = st.lists(record(), min_size=1, max_size=6)


def metrics(rec: dict[str, tuple[list[float], list[float]]]) -> dict[str, float]:
    return ref.record_metrics(*(rec[g] for g in GROUPS))


def swapped(pair: tuple[list[float], list[float]]) -> tuple[list[float], list[float]]:
    return pair[1], pair[0]


@given(record(), st.sampled_from(GROUPS))
def test_swapping_targets_mirrors_success_and_negates_magnitude(
    rec: dict[str, Any], name: str
) -> None:
    before = metrics(rec)
    after = metrics({**rec, name: swapped(rec[name])})
    success, magnitude = MOVES[name]
    note(f"before {before}, after {after}")
    assert after[success] == pytest.approx(1 - before[success], abs=1e-12)
    assert after[magnitude] == pytest.approx(-before[magnitude], abs=1e-12)


@given(record(), st.sampled_from(GROUPS), st.data())
def test_a_group_moves_only_its_own_metrics(
    rec: dict[str, Any], name: str, data: st.DataObject
) -> None:
    n = len(rec[name][0])
    replacement = data.draw(group(n).filter(lambda g: len(g[0]) == n), label=f"new {name}")
    before, after = metrics(rec), metrics({**rec, name: replacement})
    for metric in ref.RECORD_METRICS:
        if metric not in MOVES[name]:
            assert after[metric] == before[metric], f"{name} changed {metric}"


@given(record(), st.sampled_from(GROUPS), st.randoms(use_true_random=False))
def test_prompt_order_within_a_group_does_not_matter(
    rec: dict[str, Any], name: str, rnd: Any
) -> None:
    order = list(range(len(rec[name][0])))
    rnd.shuffle(order)
    new, true = rec[name]
    shuffled = ([new[i] for i in order], [true[i] for i in order])
    before, after = metrics(rec), metrics({**rec, name: shuffled})
    for metric in ref.RECORD_METRICS:
        assert after[metric] == pytest.approx(before[metric], abs=1e-12)


@given(records, st.randoms(use_true_random=False))
def test_table_does_not_depend_on_the_order_of_cases(recs: list[Any], rnd: Any) -> None:
    rows = [metrics(r) for r in recs]
    shuffled = rows[:]
    rnd.shuffle(shuffled)
    a, b = ref.aggregate(rows), ref.aggregate(shuffled)
    for metric in ref.TABLE_METRICS:
        assert a[metric] == pytest.approx(b[metric], abs=1e-9)


@given(records)
def test_score_is_the_harmonic_mean_of_es_ps_ns(recs: list[Any]) -> None:
    table = ref.aggregate(metrics(r) for r in recs)
    parts = [table["ES"], table["PS"], table["NS"]]
    note(f"table {table}")
    if min(parts) == 0:
        assert table["S"] == 0
    else:
        assert table["S"] == pytest.approx(3 / sum(1 / p for p in parts), rel=1e-12)
        # the harmonic mean of equal parts may round one ulp outside them (66.66…66 of three
        # 66.66…64 was found): the bound is the relative tolerance of the line above
        assert min(parts) * (1 - 1e-12) <= table["S"] <= max(parts) * (1 + 1e-12)


@given(records)
def test_score_is_zero_when_a_part_is_zero(recs: list[Any]) -> None:
    """Every rewrite pushed to a loss (new target less likely than the true one): ES = 0."""
    lost = [{**r, "rewrite": ([r["rewrite"][1][0] + 1], r["rewrite"][1])} for r in recs]
    table = ref.aggregate(metrics(r) for r in lost)
    assert table["ES"] == 0
    assert table["S"] == 0


def within_gate(value: float, baseline: float, tolerance: float) -> bool:
    summary = {"model": "m", "n_cases": 1, "results": {"single": {"v": {"S": value}}}}
    spec = {
        "name": "b",
        "model": "m",
        "mode": "single",
        "n_cases": 1,
        "tolerance": {"default": tolerance},
        "direction": {"default": "within"},
        "variants": {"v": {"S": baseline}},
    }
    return compare(summary, spec).passed


band = st.tuples(st.floats(0, 100), st.floats(0.01, 10))


@given(band, st.floats(0.0, 1.0), st.sampled_from((-1.0, 1.0)))
def test_within_gate_passes_inside_its_band(
    b: tuple[float, float], fraction: float, side: float
) -> None:
    baseline, tolerance = b
    assert within_gate(baseline + side * fraction * tolerance * (1 - 1e-9), baseline, tolerance)


@given(band, st.floats(1e-3, 50), st.sampled_from((-1.0, 1.0)))
def test_within_gate_fails_on_both_sides_of_its_band(
    b: tuple[float, float], beyond: float, side: float
) -> None:
    baseline, tolerance = b
    value = baseline + side * (tolerance + beyond)
    assert not within_gate(value, baseline, tolerance), f"{value} passed {baseline} ± {tolerance}"
