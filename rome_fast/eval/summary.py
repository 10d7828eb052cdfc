"""``summary.json`` from a run folder's case files: per mode and variant ES … S, failures,
collapses, |Δ| and entropy (a failed edit scores 0 on what an edit must achieve)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rome_fast.eval.config import RunConfig
from rome_fast.eval.files import read_lines
from rome_ref import metrics as ref


def _distribution(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    return {
        "min": float(array.min()),
        "median": float(np.median(array)),
        "p90": float(np.quantile(array, 0.9)),
        "max": float(array.max()),
    }


# What an edit must achieve; a case whose edit failed scores 0 on these, whatever the
# unedited model happened to score (it must never count as a success).
EDIT_METRICS = ("ES", "EM", "PS", "PM")


def _post_metrics(
    rows: Sequence[Mapping[str, Any]], failed: set[Any]
) -> Iterator[Mapping[str, float]]:
    for row in rows:
        metrics = dict(row["metrics_post"])
        if row["case_id"] in failed:
            metrics.update(dict.fromkeys(EDIT_METRICS, 0.0))
        yield metrics


def _failed_cases(rows: Sequence[Mapping[str, Any]]) -> set[Any]:
    return {r["case_id"] for r in rows if "error" in r}


def _variant_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    deltas = [r["diagnostics"]["delta_norm"] for r in rows if r.get("diagnostics")]
    failed = _failed_cases(rows)
    out: dict[str, Any] = ref.aggregate(_post_metrics(rows, failed))
    out["pre"] = ref.aggregate(r["metrics_pre"] for r in rows)
    out.update(
        {
            "n": len(rows),
            "failed": len(failed),
            "collapses": sum(bool(r.get("collapse")) for r in rows),
            "collapse_cases": [r["case_id"] for r in rows if r.get("collapse")],
            "delta_norm": _distribution(deltas),
            "generation_entropy": float(np.mean([r["generation"]["ngram_entropy"] for r in rows])),
            "unigram_entropy": float(np.mean([r["generation"]["unigram_entropy"] for r in rows])),
            "edit_seconds_mean": float(np.mean([r["timings"]["edit"] for r in rows])),
        }
    )
    if rows and "batch" in rows[0]:
        out["batches"] = _batch_summaries(rows)
    return out


def _batch_summaries(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per batch of a batched method's run: its facts, whether it failed, seconds per fact,
    per-layer |Δ| and conditioning, and (sequential) ‖W − W0‖ after it."""
    batches: dict[int, dict[str, Any]] = {}
    for row in rows:
        entry = batches.setdefault(
            row["batch"],
            {
                "batch": row["batch"],
                "facts": 0,
                "failed": "error" in row,
                "seconds_per_fact": row["timings"]["edit"],
            },
        )
        entry["facts"] += 1
        if row["diagnostics"]:
            entry["sites"] = row["diagnostics"]["batch"]["sites"]
        if "cumulative_norm" in row:
            entry["cumulative_norm"] = row["cumulative_norm"]
    return list(batches.values())


def summarize(
    out: Path, cfg: RunConfig, model_name: str, case_ids: Sequence[str | int]
) -> dict[str, Any]:
    """``summary.json`` from the case files; sequential metrics are those after the last
    edit (the paper's Table 2), the scores right after each edit are under ``immediate``."""
    results: dict[str, dict[str, Any]] = {mode: {} for mode in cfg.modes}
    for mode in cfg.modes:
        for variant in cfg.variants:
            rows = read_lines(out / f"{mode}-{variant}.jsonl")
            if len(rows) != len(case_ids):
                raise RuntimeError(
                    f"{mode}-{variant}.jsonl holds {len(rows)} of "
                    f"{len(case_ids)} cases; rerun to finish it"
                )
            summary = _variant_summary(rows)
            if mode == "sequential":
                final = read_lines(out / f"sequential-{variant}-final.jsonl")
                immediate = {m: summary.pop(m) for m in ref.TABLE_METRICS}
                summary.update(ref.aggregate(_post_metrics(final, _failed_cases(rows))))
                summary["immediate"] = immediate
                summary["first_collapse"] = next(
                    (r["index"] + 1 for r in rows if r.get("collapse")), None
                )
                summary["cumulative_norm"] = [r["cumulative_norm"] for r in rows]
                summary["glue"] = read_lines(out / f"glue-{variant}.jsonl")
            results[mode][variant] = summary
    return {
        "model": model_name,
        "data": cfg.data,
        "n_cases": len(case_ids),
        "degrade": cfg.degrade,
        "results": results,
    }
