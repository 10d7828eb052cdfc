"""Regression gates: a run's ``summary.json`` against a baseline with stated tolerances.

A baseline file (shipped ones: ``rome_fast/eval/baselines/*.json``, package data)::

    {"name": ..., "source": ..., "model": ..., "mode": "single" | "sequential",
     "n_cases": ..., "tolerance": {"default": 2.0, "EM": 3.0, ...},
     "direction": {"default": "at-least", "collapses": "at-most"},
     "variants": {"rome": {"ES": 99.92, ...}, ...}}

Directions: ``at-least`` fails when value < baseline − tol (a regression), ``at-most`` when
value > baseline + tol, ``within`` when |value − baseline| > tol. Every failing metric is
named; a variant or metric the baseline lists but the summary lacks is a failure too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from rome_fast.eval.files import read_json_object
from rome_ref import metrics as ref

DIRECTIONS = ("at-least", "at-most", "within")


def shipped_baselines() -> Traversable:
    """The baselines shipped with the package (package data, found where it is installed)."""
    return resources.files("rome_fast.eval").joinpath("baselines")


def baselines_dir() -> Path:
    """The shipped baselines as a folder on disk."""
    return Path(str(shipped_baselines()))


def shipped_baseline_names() -> list[str]:
    return sorted(
        entry.name.removesuffix(".json")
        for entry in shipped_baselines().iterdir()
        if entry.name.endswith(".json")
    )


def load_baseline(spec: str | os.PathLike[str]) -> dict[str, Any]:
    """A baseline by path, or by name among the shipped ones (``gptj-single``)."""
    path = Path(spec)
    source: Path | Traversable = path
    if not path.is_file():
        source = shipped_baselines().joinpath(f"{spec}.json")
    if not source.is_file():
        raise FileNotFoundError(
            f"baseline {str(spec)!r} not found: not a file, nor a shipped baseline "
            f"({', '.join(shipped_baseline_names())})"
        )
    baseline = read_json_object(source, "gate baseline")
    for key in ("model", "mode", "variants", "tolerance"):
        if key not in baseline:
            raise ValueError(f"{source}: baseline lacks {key!r}")
    return baseline


@dataclass(frozen=True)
class Check:
    variant: str
    metric: str
    value: float | None  # None: missing from the summary
    baseline: float
    tolerance: float
    direction: str

    @property
    def bounds(self) -> tuple[float, float]:
        return self.baseline - self.tolerance, self.baseline + self.tolerance

    @property
    def passed(self) -> bool:
        if self.value is None:
            return False
        low, high = self.bounds
        if self.direction == "at-least":
            return self.value >= low
        if self.direction == "at-most":
            return self.value <= high
        return abs(self.value - self.baseline) <= self.tolerance

    def describe(self) -> str:
        low, high = self.bounds
        need = {
            "at-least": f">= {low:.2f}",
            "at-most": f"<= {high:.2f}",
            "within": f"within ±{self.tolerance:g}",
        }[self.direction]
        got = "missing" if self.value is None else f"{self.value:.2f}"
        return f"{self.variant} {self.metric}: {got} (baseline {self.baseline:.2f}, needs {need})"


@dataclass(frozen=True)
class GateResult:
    baseline: str
    mode: str
    checks: tuple[Check, ...]
    notes: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def report(self) -> str:
        head = f"gate {self.baseline} ({self.mode}): {'PASS' if self.passed else 'FAIL'}"
        lines = [head, *(f"  note: {n}" for n in self.notes)]
        lines += [f"  {'ok  ' if c.passed else 'FAIL'} {c.describe()}" for c in self.checks]
        if not self.passed:
            lines.append(
                "  outside tolerance: "
                + ", ".join(f"{c.variant}/{c.metric}" for c in self.failures)
            )
        return "\n".join(lines)


def _setting(table: Mapping[str, Any], metric: str) -> Any:
    return table.get(metric, table.get("default"))


def compare(
    summary: Mapping[str, Any],
    baseline: Mapping[str, Any],
    *,
    allow_model_mismatch: bool = False,
    allow_small_run: bool = False,
) -> GateResult:
    """Check every metric of every variant the baseline lists."""
    name = str(baseline.get("name", "baseline"))
    mode = str(baseline["mode"])
    if summary.get("model") != baseline["model"] and not allow_model_mismatch:
        raise ValueError(
            f"the summary is for model {summary.get('model')!r} but baseline {name} "
            f"is for {baseline['model']!r}; compare like with like "
            "(or pass --allow-model-mismatch)"
        )
    notes = []
    n_run, n_base = summary.get("n_cases"), baseline.get("n_cases")
    if n_run != n_base:
        notes.append(f"run has {n_run} cases, baseline {n_base}")
    if summary.get("degrade", "none") != "none":
        notes.append(f"the run used a deliberately degraded editor ({summary['degrade']})")
    results = summary.get("results", {}).get(mode, {})
    tolerances = baseline["tolerance"]
    directions = baseline.get("direction", {"default": "at-least"})
    checks = []
    if isinstance(n_base, int) and not allow_small_run:
        # The tolerance was set for the baseline's sample: a smaller run's metrics move by
        # more than that through sampling alone, so it cannot pass (nor fail) honestly.
        observed_n = float(n_run) if isinstance(n_run, int) else None
        checks.append(Check("run", "cases", observed_n, float(n_base), 0.0, "at-least"))
    for variant, expected in baseline["variants"].items():
        got = results.get(variant, {})
        for metric, value in expected.items():
            direction = str(_setting(directions, metric) or "at-least")
            if direction not in DIRECTIONS:
                raise ValueError(
                    f"baseline {name}: direction {direction!r} for {metric}; "
                    f"use one of {DIRECTIONS}"
                )
            tolerance = _setting(tolerances, metric)
            if tolerance is None:
                raise ValueError(f"baseline {name}: no tolerance for {metric} and no default")
            observed = got.get(metric)
            checks.append(
                Check(
                    variant,
                    metric,
                    None if observed is None else float(observed),
                    float(value),
                    float(tolerance),
                    direction,
                )
            )
    # A failed edit is never a success: any failure fails the gate, whatever the metrics.
    for variant in baseline["variants"]:
        failed = results.get(variant, {}).get("failed", 0)
        checks.append(Check(variant, "failed edits", float(failed), 0.0, 0.0, "at-most"))
    return GateResult(name, mode, tuple(checks), tuple(notes))


def check_summary_file(
    summary: str | os.PathLike[str],
    baseline: str | os.PathLike[str],
    *,
    allow_model_mismatch: bool = False,
    allow_small_run: bool = False,
) -> GateResult:
    data = read_json_object(Path(summary), "run summary (summary.json)")
    return compare(
        data,
        load_baseline(baseline),
        allow_model_mismatch=allow_model_mismatch,
        allow_small_run=allow_small_run,
    )


def baseline_from_summary(
    summary: Mapping[str, Any],
    mode: str,
    *,
    name: str,
    source: str,
    tolerance: Mapping[str, float],
    tolerance_note: str,
) -> dict[str, Any]:
    """A baseline holding a measured run's metrics for ``mode`` (every variant it ran)."""
    lacking = [key for key in ("model", "n_cases", "results") if key not in summary]
    if lacking:
        raise ValueError(f"the summary lacks {', '.join(lacking)}; pass a run's summary.json")
    results = summary.get("results", {}).get(mode)
    if not results:
        raise ValueError(f"the summary has no {mode!r} results; run that mode first")
    if summary.get("degrade", "none") != "none":
        raise ValueError("refusing to make a baseline from a deliberately degraded run")
    for variant, table in results.items():
        missing = [m for m in ref.TABLE_METRICS if m not in table]
        if missing:
            raise ValueError(
                f"the summary's {mode} results for {variant} lack {', '.join(missing)}; "
                "make the baseline from a complete run's summary.json"
            )
    return {
        "name": name,
        "source": source,
        "model": summary["model"],
        "mode": mode,
        "n_cases": summary["n_cases"],
        "data": summary.get("data"),
        "tolerance": dict(tolerance),
        "tolerance_note": tolerance_note,
        "direction": {"default": "at-least"},
        "variants": {
            variant: {m: round(float(table[m]), 2) for m in ref.TABLE_METRICS}
            for variant, table in results.items()
        },
    }
