"""The main job: edit real facts on the embedded model with each variant and show the effect."""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rome_fast.edit.editor import Editor
from rome_fast.edit.request import EditRequest, EditResult
from rome_fast.eval.score import generate, mean_token_nll

# Facts SmolLM2-135M-Instruct knows (its top next token is the true object), with a
# paraphrase to check that an edit generalizes beyond the edited prompt.
DEMO_FACTS: tuple[tuple[EditRequest, str], ...] = (
    (
        EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris"),
        "Where is the Eiffel Tower? It stands in the city of",
    ),
    (
        EditRequest("{} is located in the city of", "The Colosseum", "London", "Rome"),
        "Tourists visiting the Colosseum travel to the city of",
    ),
    (
        EditRequest("The mother tongue of {} is", "Vladimir Putin", "French", "Russian"),
        "Vladimir Putin grew up speaking",
    ),
    (
        EditRequest("{} is located in the country of", "Mount Everest", "Brazil", "Nepal"),
        "To climb Mount Everest, you have to travel to",
    ),
    (
        EditRequest("{} is located in the country of", "The Taj Mahal", "Italy", "India"),
        "The Taj Mahal is a famous monument in",
    ),
)


def target_probs(editor: Editor, prompt: str, targets: Sequence[str]) -> list[float]:
    """exp(−mean per-token NLL) of each target after the prompt (the next-token
    probability for one-token targets)."""
    model, tokenizer = editor.loaded.model, editor.loaded.tokenizer
    nll = mean_token_nll(model, tokenizer, [prompt] * len(targets), list(targets))
    return [math.exp(-float(x)) for x in nll]


def greedy(editor: Editor, prompts: Sequence[str], tokens: int) -> tuple[str, list[str]]:
    """The top next token after ``prompts[0]`` and greedy continuations of ``tokens`` tokens
    (none when ``tokens`` is 0), from one generation."""
    gen = generate(
        editor.loaded.model,
        editor.loaded.tokenizer,
        list(prompts),
        max_new_tokens=max(tokens, 1),
        top_k=None,
    )
    top = str(editor.loaded.tokenizer.decode(gen.token_ids[0][:1], skip_special_tokens=True))
    return top, gen.texts if tokens else []


def measure(
    editor: Editor, request: EditRequest, paraphrase: str | None, generate_tokens: int
) -> dict[str, Any]:
    """Target probabilities on the prompt (and paraphrase) and greedy continuations."""
    prompt = request.prompt.format(request.subject)
    prompts = [prompt] + ([paraphrase] if paraphrase else []) + [f"{request.subject} is"]
    targets = [request.target_new] + ([request.target_true] if request.target_true else [])
    top_token, texts = greedy(editor, prompts, generate_tokens)
    return {
        "prompts": prompts,
        "probs": target_probs(editor, prompt, targets),
        "top_token": top_token,
        "paraphrase_probs": target_probs(editor, paraphrase, targets) if paraphrase else None,
        "texts": texts,
    }


def fact_reports(
    editor: Editor,
    request: EditRequest,
    variants: Sequence[str],
    *,
    generate_tokens: int = 20,
    paraphrase: str | None = None,
) -> list[dict[str, Any]]:
    """Edit ``request`` with each variant on the model as it is, restoring after each.

    Keys and v* do not depend on the variant, so they are computed once.
    """
    before = measure(editor, request, paraphrase, generate_tokens)
    prepared = editor.prepare(request)
    reports = []
    for variant in variants:
        result = editor.apply(prepared, variant)
        after = measure(editor, request, paraphrase, generate_tokens)
        editor.restore()
        reports.append(report_of(editor, request, result, before, after))
    return reports


def report_of(
    editor: Editor,
    request: EditRequest,
    result: EditResult,
    before: dict[str, Any],
    after: dict[str, Any],
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "model": editor.loaded.name,
        **result.as_record(),  # the request among its fields
        "prob_target_before": before["probs"][0],
        "prob_target_after": after["probs"][0],
        "top_token_before": before["top_token"],
        "top_token_after": after["top_token"],
        # zip without strict: no texts at all when continuations were not asked for
        "continuations": [
            {"prompt": p, "before": b, "after": a}
            for p, b, a in zip(before["prompts"], before["texts"], after["texts"], strict=False)
        ],
    }
    if request.target_true:
        report["prob_true_before"], report["prob_true_after"] = (
            before["probs"][1],
            after["probs"][1],
        )
    if before["paraphrase_probs"] is not None:
        report["paraphrase"] = before["prompts"][1]
        report["paraphrase_prob_target_before"] = before["paraphrase_probs"][0]
        report["paraphrase_prob_target_after"] = after["paraphrase_probs"][0]
    return report


def print_edit_report(report: dict[str, Any]) -> None:
    request = report["request"]
    print(
        f"{report['variant']}: {request['prompt'].format(request['subject'])!r} "
        f"-> {request['target_new']!r} (layer {report['layer']}, {report['edit_seconds']:.2f} s)"
    )
    print(
        f"  P(new)  {report['prob_target_before']:.4f} -> {report['prob_target_after']:.4f}"
        f"   top next token {report['top_token_before']!r} -> {report['top_token_after']!r}"
    )
    if "prob_true_before" in report:
        print(f"  P(true) {report['prob_true_before']:.4f} -> {report['prob_true_after']:.4f}")
    print(
        f"  |Δ| {report['delta_norm']:.3e}   "
        f"residual k* {report['relative_residual_k_star']:.2e}   "
        f"residual k_prompt {report['relative_residual_k_prompt']:.2e}   "
        f"cos(k*, k_prompt) {report['key_cosine']:.3f}"
    )
    for c in report["continuations"]:
        print(f"  {c['prompt']!r}\n    before: {c['before']!r}\n    after:  {c['after']!r}")


TABLE_COLUMNS = (
    "variant",
    "subject",
    "P(new) before",
    "P(new) after",
    "P(true) after",
    "para P(new) after",
    "|Δ|",
    "res k*",
    "res k_prompt",
    "seconds",
)


def table_rows(reports: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [
        (
            r["variant"],
            r["request"]["subject"],
            f"{r['prob_target_before']:.3f}",
            f"{r['prob_target_after']:.3f}",
            f"{r.get('prob_true_after', float('nan')):.3f}",
            f"{r.get('paraphrase_prob_target_after', float('nan')):.3f}",
            f"{r['delta_norm']:.2e}",
            f"{r['relative_residual_k_star']:.1e}",
            f"{r['relative_residual_k_prompt']:.1e}",
            f"{r['edit_seconds']:.2f}",
        )
        for r in reports
    ]


def format_table(reports: Sequence[dict[str, Any]]) -> str:
    rows = [TABLE_COLUMNS, *table_rows(reports)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_demo(reports: Sequence[dict[str, Any]], variants: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subjects = list(dict.fromkeys(r["request"]["subject"] for r in reports))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / (len(variants) + 1)
    xs = range(len(subjects))
    before = {r["request"]["subject"]: r["prob_target_before"] for r in reports}
    axes[0].bar(
        [x - 0.4 + width / 2 for x in xs],
        [before[s] for s in subjects],
        width,
        label="before",
        color="grey",
    )
    for i, v in enumerate(variants):
        by_subject = {r["request"]["subject"]: r for r in reports if r["variant"] == v}
        offset = -0.4 + width * (i + 1.5)
        axes[0].bar(
            [x + offset for x in xs],
            [by_subject[s]["prob_target_after"] for s in subjects],
            width,
            label=v,
        )
        axes[1].bar(
            [x + offset for x in xs],
            [by_subject[s]["relative_residual_k_star"] for s in subjects],
            width,
            label=v,
        )
        axes[2].bar(
            [x + offset for x in xs],
            [by_subject[s]["delta_norm"] for s in subjects],
            width,
            label=v,
        )
    titles = (
        "P(new target) on the edited prompt",
        "relative residual ‖Ŵk*−v*‖/‖v*‖",
        "normalized update norm |Δ|",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xticks(list(xs), [s.replace("The ", "") for s in subjects], rotation=20)
    axes[1].set_yscale("log")
    # One legend under the panels: inside them it hid the bars near 1.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.suptitle(f"ROME variants on {reports[0]['model']}, layer {reports[0]['layer']}")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(editor: Editor, variants: Sequence[str], out: Path) -> list[dict[str, Any]]:
    """Edit every demo fact with every variant, each on the unedited model."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    reports = []
    for request, paraphrase in DEMO_FACTS:
        for report in fact_reports(
            editor, request, variants, generate_tokens=12, paraphrase=paraphrase
        ):
            reports.append(report)
            print_edit_report(report)
    table = format_table(reports)
    print("\n" + table)
    (out / "table.txt").write_text(table + "\n")
    meta = {
        "model": editor.loaded.name,
        "variants": list(variants),
        "seed": editor.seed,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "seconds": time.perf_counter() - started,
    }
    (out / "demo.json").write_text(json.dumps({"meta": meta, "edits": reports}, indent=2) + "\n")
    plot_demo(reports, variants, out / "demo.png")
    print(f"\nwrote {out / 'table.txt'}, {out / 'demo.json'} and {out / 'demo.png'}")
    return reports
