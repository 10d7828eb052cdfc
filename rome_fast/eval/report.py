"""The paper's tables (variants as rows) and figures (PNG, Agg backend) from a run folder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt

from rome_fast.eval.runs import read_lines
from rome_ref.metrics import TABLE_METRICS

GROUPS = (
    ("Efficacy", ("ES", "EM")),
    ("Generalization", ("PS", "PM")),
    ("Locality", ("NS", "NM")),
    ("Score", ("S",)),
)


def format_table(results: Mapping[str, Mapping[str, Any]], title: str) -> str:
    """One mode's table in the layout of the paper's Tables 1 and 2, plus collapse counts."""
    width = 8
    name_width = max([14, *(len(variant) + 2 for variant in results)])  # long user variants
    group_row = f"{'':<{name_width}}" + "".join(f"{name:^{width * len(ms)}}" for name, ms in GROUPS)
    metric_row = f"{'variant':<{name_width}}" + "".join(
        f"{m + '↑':>{width}}" for m in TABLE_METRICS
    )
    lines = [
        title,
        group_row,
        metric_row + f"{'collapses':>11}{'failed':>8}",
        "-" * (len(metric_row) + 19),
    ]
    for variant, row in results.items():
        cells = "".join(f"{row[m]:>{width}.2f}" for m in TABLE_METRICS)
        counts = f"{row.get('collapses', 0):>11}{row.get('failed', 0):>8}"
        lines.append(f"{variant:<{name_width}}{cells}{counts}")
    return "\n".join(lines)


def format_summary(summary: Mapping[str, Any]) -> str:
    n = summary["n_cases"]
    parts = []
    for mode, results in summary["results"].items():
        when = "after the last edit" if mode == "sequential" else "each edit alone"
        title = f"{summary['model']}, {mode} editing, {n} cases ({when}), ×100"
        parts.append(format_table(results, title))
    return "\n\n".join(parts)


def _scatter_delta_entropy(ax: Any, rows: Sequence[Mapping[str, Any]], title: str) -> None:
    points = [
        (
            r["diagnostics"]["delta_norm"],
            r["generation"]["unigram_entropy"],
            bool(r.get("collapse")),
        )
        for r in rows
        if r.get("diagnostics")
    ]
    for flagged, colour, label in ((False, "tab:blue", "edit"), (True, "tab:red", "collapse")):
        xs = [p[0] for p in points if p[2] == flagged]
        ys = [p[1] for p in points if p[2] == flagged]
        if xs:
            ax.scatter(xs, ys, s=10, c=colour, label=label)
    if any(p[0] > 0 for p in points):
        ax.set_xscale("log")
    ax.set_xlabel("|Δ| = ‖ΔW‖_F / numel")
    ax.set_ylabel("normalized unigram entropy")
    ax.set_title(title)
    if points:  # every edit failed: nothing to label
        ax.legend(loc="best", fontsize="small")


def plot_delta_entropy(out: Path, mode: str, variants: Sequence[str]) -> Path:
    """The paper's Figure 2/5: |Δ| against generation entropy, one panel per variant."""
    fig, axes = plt.subplots(1, len(variants), figsize=(4.5 * len(variants), 4), squeeze=False)
    for ax, variant in zip(axes[0], variants, strict=True):
        _scatter_delta_entropy(ax, read_lines(out / f"{mode}-{variant}.jsonl"), variant)
    fig.suptitle(f"{mode} edits: |Δ| against generation entropy")
    fig.tight_layout()
    path = out / "plots" / f"delta-entropy-{mode}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sequential(out: Path, variant: str) -> Path:
    """The paper's Figures 3/4: (a) downstream scores and (b) |Δ| over sequential edits."""
    rows = read_lines(out / f"sequential-{variant}.jsonl")
    glue = read_lines(out / f"glue-{variant}.jsonl")
    fig, (ax_glue, ax_delta) = plt.subplots(1, 2, figsize=(11, 4))
    for task in sorted({t for g in glue for t in g["tasks"]}):
        steps = [g["step"] for g in glue if task in g["tasks"]]
        ax_glue.plot(
            steps,
            [g["tasks"][task]["f1"] for g in glue if task in g["tasks"]],
            marker="o",
            label=f"{task} F1",
        )
    ax_glue.set_xlabel("edits")
    ax_glue.set_ylabel("F1")
    ax_glue.set_ylim(-0.05, 1.05)
    ax_glue.set_title("(a) downstream evaluation")
    if glue:
        ax_glue.legend(fontsize="small")
    steps = [r["index"] + 1 for r in rows if r.get("diagnostics")]
    deltas = [r["diagnostics"]["delta_norm"] for r in rows if r.get("diagnostics")]
    ax_delta.plot(steps, deltas, lw=1, label="|Δ| of the edit")
    ax_delta.plot(
        [r["index"] + 1 for r in rows],
        [r["cumulative_delta"] for r in rows],
        lw=1,
        label="‖W − W0‖_F / numel",
    )
    flagged = [
        (r["index"] + 1, r["diagnostics"]["delta_norm"])
        for r in rows
        if r.get("collapse") and r.get("diagnostics")
    ]
    if flagged:
        ax_delta.scatter(*zip(*flagged, strict=True), c="tab:red", s=20, label="collapse", zorder=3)
    if any(d > 0 for d in deltas):
        ax_delta.set_yscale("log")
    ax_delta.set_xlabel("edits")
    ax_delta.set_title("(b) |Δ|")
    ax_delta.legend(fontsize="small")
    fig.suptitle(f"sequential editing with {variant}")
    fig.tight_layout()
    path = out / "plots" / f"sequential-{variant}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out: Path, summary: Mapping[str, Any]) -> list[Path]:
    """``table.txt`` and every plot the run's modes allow."""
    (out / "table.txt").write_text(format_summary(summary) + "\n", encoding="utf-8")
    paths = [out / "table.txt"]
    for mode, results in summary["results"].items():
        paths.append(plot_delta_entropy(out, mode, list(results)))
        if mode == "sequential":
            paths += [plot_sequential(out, variant) for variant in results]
    return paths
