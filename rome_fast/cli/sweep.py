"""Choose the edited layer by measurement: r-ROME edits of known facts at each layer.

For every candidate layer, each fact is edited alone on the unedited model and scored
with the CounterFact metrics (efficacy on the rewrite prompt, paraphrase success,
neighborhood success); the layer with the best score S wins.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import rome_ref.metrics as ref
from rome_fast.edit.editor import Editor
from rome_fast.eval.case_scoring import metrics_of, score_case
from rome_fast.eval.data import EvalCase
from rome_fast.hparams.defaults import HParams
from rome_fast.model.loader import LoadedModel

COLUMNS = ("ES", "PS", "NS", "S", "EM", "PM", "NM")


def known_cases(
    loaded: LoadedModel,
    cases: Sequence[EvalCase],
    n: int,
    *,
    min_prob: float = 0.1,
    batch_size: int = 16,
) -> list[EvalCase]:
    """The first ``n`` cases whose true object the model gives at least ``min_prob`` and
    prefers to the new one on the rewrite prompt."""
    known = []
    for case in cases:
        rewrite = score_case(loaded.model, loaded.tokenizer, case, batch_size)["rewrite"]
        nll_true, nll_new = rewrite["nll_true"][0], rewrite["nll_new"][0]
        if math.exp(-nll_true) >= min_prob and nll_true < nll_new:
            known.append(case)
            if len(known) == n:
                return known
    raise ValueError(
        f"only {len(known)} of {len(cases)} cases are known to {loaded.name} "
        f"(P(true) >= {min_prob}); pass more cases or lower min_prob"
    )


def sweep_layer(
    editor: Editor, cases: Sequence[EvalCase], variant: str, batch_size: int = 16
) -> dict[str, Any]:
    """Edit each case alone at the editor's layer; aggregate metrics and |Δ|."""
    loaded = editor.loaded
    records, delta_norms, seconds = [], [], []
    for case in tqdm(cases, desc=f"layer {editor.layer}", leave=False):
        with editor.edited(case.request(), variant) as result:
            scores = score_case(loaded.model, loaded.tokenizer, case, batch_size)
        records.append(metrics_of(scores))
        delta_norms.append(result.delta_norm)
        seconds.append(result.edit_seconds)
    row: dict[str, Any] = {"layer": editor.layer, **ref.aggregate(records)}
    row["delta_norm_median"] = float(np.median(delta_norms))
    row["edit_seconds_mean"] = float(np.mean(seconds))
    return row


def run_sweep(
    loaded: LoadedModel,
    cases: Sequence[EvalCase],
    layers: Sequence[int],
    make_editor: Callable[[HParams], Editor],
    base: HParams,
    *,
    variant: str = "r-rome",
    out: Path,
) -> list[dict[str, Any]]:
    """Sweep ``layers``; write ``sweep.json``, ``sweep.md`` and ``sweep.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = []
    for layer in layers:
        rows.append(sweep_layer(make_editor(base.replace(layer=layer)), cases, variant))
        print(format_rows(rows[-1:], header=not rows[:-1]))
    best = max(rows, key=lambda r: r["S"])
    meta = {
        "model": loaded.name,
        "variant": variant,
        "layers": list(layers),
        "cases": [c.case_id for c in cases],
        "best_layer": best["layer"],
        "seconds": time.perf_counter() - started,
    }
    (out / "sweep.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (out / "sweep.md").write_text(format_rows(rows) + f"\n\nbest layer by S: {best['layer']}\n")
    plot_sweep(rows, loaded.name, out / "sweep.png")
    return rows


def format_rows(rows: Sequence[dict[str, Any]], header: bool = True) -> str:
    lines = []
    if header:
        lines += [
            "| layer | " + " | ".join(COLUMNS) + " | median abs Δ | s/edit |",
            "|---" * (len(COLUMNS) + 3) + "|",
        ]
    for r in rows:
        cells = " | ".join(f"{r[c]:.1f}" for c in COLUMNS)
        lines.append(
            f"| {r['layer']} | {cells} | {r['delta_norm_median']:.2e} | "
            f"{r['edit_seconds_mean']:.1f} |"
        )
    return "\n".join(lines)


def plot_sweep(rows: Sequence[dict[str, Any]], model: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    layers = [r["layer"] for r in rows]
    for metric in ("ES", "PS", "NS", "S"):
        ax.plot(layers, [r[metric] for r in rows], marker="o", label=metric)
    ax.set_xlabel("edited layer")
    ax.set_ylabel("score (×100)")
    ax.set_title(f"r-ROME layer sweep on {model}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
