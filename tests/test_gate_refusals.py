"""A gate cannot pass a run too small for its baseline's tolerance."""

from __future__ import annotations

from typing import Any

from rome_fast.eval.gates import compare

BASELINE: dict[str, Any] = {
    "name": "twenty",
    "model": "m",
    "mode": "single",
    "n_cases": 20,
    "tolerance": {"default": 2.0},
    "variants": {"rome": {"ES": 90.0}},
}


def summary(n_cases: int) -> dict[str, Any]:
    return {"model": "m", "n_cases": n_cases, "results": {"single": {"rome": {"ES": 100.0}}}}


def test_run_smaller_than_the_baseline_fails_the_gate() -> None:
    result = compare(summary(1), BASELINE)
    assert not result.passed
    assert [(c.variant, c.metric) for c in result.failures] == [("run", "cases")]
    assert "run cases: 1.00 (baseline 20.00, needs >= 20.00)" in result.report()


def test_run_as_large_as_the_baseline_passes() -> None:
    assert compare(summary(20), BASELINE).passed


def test_small_run_passes_only_when_explicitly_allowed() -> None:
    assert compare(summary(1), BASELINE, allow_small_run=True).passed
