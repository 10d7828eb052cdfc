"""Gate logic on synthetic summaries, and the shipped paper baselines."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rome_fast.eval.gates import (
    baselines_dir,
    compare,
    load_baseline,
    shipped_baseline_names,
)
from rome_ref.metrics import TABLE_METRICS

BATCHED = ("memit", "emmet", "alphaedit")
MODES = ("single", "sequential")

BASELINE: dict[str, Any] = {
    "name": "synthetic",
    "model": "m",
    "mode": "single",
    "n_cases": 10,
    "tolerance": {"default": 2.0, "EM": 5.0},
    "direction": {"default": "at-least", "collapses": "at-most"},
    "variants": {"r-rome": {"ES": 90.0, "EM": 50.0, "collapses": 0}, "rome": {"ES": 80.0}},
}


def summary(**values: Any) -> dict[str, Any]:
    row = {"ES": 90.0, "EM": 50.0, "collapses": 0, **values}
    return {
        "model": "m",
        "n_cases": 10,
        "results": {"single": {"r-rome": row, "rome": {"ES": 80.0}}},
    }


def test_gate_passes_within_tolerance() -> None:
    assert compare(summary(ES=88.5, EM=46.0), BASELINE).passed


def test_gate_fails_naming_each_metric_outside() -> None:
    result = compare(summary(ES=80.0, EM=40.0, collapses=3), BASELINE)
    assert not result.passed
    assert [(c.variant, c.metric) for c in result.failures] == [
        ("r-rome", "ES"),
        ("r-rome", "EM"),
        ("r-rome", "collapses"),
    ]
    assert "r-rome/ES, r-rome/EM, r-rome/collapses" in result.report()


def test_improvement_passes_an_at_least_gate() -> None:
    assert compare(summary(ES=100.0), BASELINE).passed


def test_within_gate_fails_both_ways() -> None:
    baseline = {**BASELINE, "direction": {"default": "within"}}
    assert not compare(summary(ES=95.0), baseline).passed


def test_missing_variant_fails() -> None:
    data = summary()
    del data["results"]["single"]["rome"]
    result = compare(data, BASELINE)
    assert [(c.variant, c.metric, c.value) for c in result.failures] == [("rome", "ES", None)]


def test_model_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="compare like with like"):
        compare({**summary(), "model": "other"}, BASELINE)


@pytest.mark.parametrize("name", ["gptj-single", "gptj-sequential", "gpt2xl-single"])
def test_paper_baselines_hold_the_spec_tables(name: str) -> None:
    baseline = load_baseline(name)
    assert "arXiv 2403.07175" in baseline["source"]
    assert set(baseline["variants"]) == {"rome", "r-rome", "p-rome"}
    for row in baseline["variants"].values():
        assert tuple(row) == TABLE_METRICS


def test_paper_row_passes_against_itself_and_fails_when_lowered() -> None:
    baseline = load_baseline("gptj-sequential")
    results = {v: dict(row) for v, row in baseline["variants"].items()}
    run = {"model": "gpt-j-6b", "n_cases": 5000, "results": {"sequential": results}}
    assert compare(run, baseline).passed
    results["r-rome"]["PS"] -= 10
    failures = compare(run, baseline).failures
    assert [(c.variant, c.metric) for c in failures] == [("r-rome", "PS")]


def test_all_baseline_files_parse() -> None:
    files = sorted(baselines_dir().glob("*.json"))
    assert files
    for path in files:
        assert load_baseline(path)["variants"], json.loads(path.read_text())


def test_baselines_are_package_data_found_by_name() -> None:
    names = shipped_baseline_names()
    assert names == sorted(p.stem for p in baselines_dir().glob("*.json"))
    assert {"gptj-single", "smollm2-regression-single"} <= set(names)
    batched = {f"smollm2-regression-{m}-{mode}" for m in BATCHED for mode in MODES}
    assert batched <= set(names)  # what `nox -s regression -- --method M` gates against
    for name in names:
        assert load_baseline(name)["variants"]


def test_unknown_baseline_names_the_shipped_ones() -> None:
    with pytest.raises(FileNotFoundError, match=r"nor a shipped baseline .*gptj-single"):
        load_baseline("no-such-baseline")


def measured_summary(es: float = 90.0, degrade: str = "none") -> dict[str, Any]:
    row = {"ES": es, "EM": 50.0, "PS": 70.0, "PM": 20.0, "NS": 80.0, "NM": 5.0, "S": 79.0}
    return {
        "model": "m",
        "n_cases": 10,
        "degrade": degrade,
        "data": "d",
        "results": {"single": {"r-rome": row}},
    }


def test_baseline_from_a_measured_run_gates_that_run() -> None:
    from rome_fast.eval.gates import baseline_from_summary

    baseline = baseline_from_summary(
        measured_summary(),
        "single",
        name="b",
        source="s",
        tolerance={"default": 5.0},
        tolerance_note="",
    )
    assert baseline["variants"]["r-rome"]["ES"] == 90.0
    assert compare(measured_summary(), baseline).passed
    failed = compare(measured_summary(es=80.0), baseline)
    assert [c.metric for c in failed.failures] == ["ES"]


def test_baseline_is_never_made_from_a_degraded_run() -> None:
    from rome_fast.eval.gates import baseline_from_summary

    with pytest.raises(ValueError, match="degraded"):
        baseline_from_summary(
            measured_summary(degrade="zero"),
            "single",
            name="b",
            source="s",
            tolerance={"default": 5.0},
            tolerance_note="",
        )
