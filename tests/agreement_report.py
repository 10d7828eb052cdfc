"""The public-evaluator agreement table of docs/results/public-evaluator-agreement.md:
``python -m tests.agreement_report [--smollm2]`` (the same scoring as
tests/test_public_evaluator.py, with the differences measured instead of asserted)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from rome_fast.eval.case_scoring import metrics_of
from rome_ref import metrics as ref
from tests.models import fresh_model
from tests.public_evaluator import public_summary
from tests.test_public_evaluator import (
    FAMILIES,
    Scored,
    evaluator,
    padded_nlls,
    rounded_table,
    sample_cases,
    smollm2_scored,
    tiny_scored,
)


def agreement_row(model: str, scored: list[Scored]) -> str:
    nll_diff = max(
        float(np.max(np.abs(np.subtract(s.ours[g][side], s.theirs[g][side]))))
        for s in scored
        for g in s.ours
        for side in ("nll_new", "nll_true")
    )
    with tempfile.TemporaryDirectory() as tmp:
        records, table = public_summary(evaluator(), Path(tmp), [s.theirs for s in scored])
    ours = [metrics_of(s.ours) for s in scored]
    record_diff = max(abs(o[m] - r[m]) for o, r in zip(ours, records, strict=True) for m in o)
    exact = ref.aggregate(ours)
    rounded = rounded_table(ours)
    cells = " / ".join(f"{exact[m]:.2f}" for m in ("ES", "PS", "NS"))
    return (
        f"| {model} | {len(scored)} | {nll_diff:.1e} | {record_diff:.1e} | {cells} | "
        f"{table['S']:.4f} | {rounded['S']:.4f} | {exact['S']:.4f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smollm2", action="store_true", help="add the SmolLM2 row (slow)")
    args = parser.parse_args()
    print(
        "| model | records | max abs ΔNLL | max abs Δ per-record metric | ES / PS / NS (ours) "
        "| S summarize.py | S ours, rounded as it | S ours, exact |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for family in FAMILIES:
        print(agreement_row(f"random:{family}", tiny_scored(family)))
    if args.smollm2:
        print(agreement_row("smollm2", smollm2_scored()))
    case = sample_cases()[0]
    right, _ = padded_nlls(fresh_model("tiny-gpt2"), case, "right")
    left, ours_left = padded_nlls(fresh_model("tiny-gpt2"), case, "left")
    print(
        f"\nleft padding, case {case.case_id} on random:tiny-gpt2: public NLLs move by up to "
        f"{np.max(np.abs(left - right)):.3f} nats (mean {np.mean(np.abs(left - right)):.3f}); "
        f"ours by {np.max(np.abs(ours_left - right)):.1e}"
    )


if __name__ == "__main__":
    main()
