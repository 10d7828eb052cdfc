"""The margin table of docs/results/check-variant-bounds.md:
``python -m tests.check_variant_bounds_report --out docs/results/check-variant-bounds.md``.

On seeded random cases drawn over the ranges ``check_variant`` searches, each numeric
property's value / floor (``rome_fast.testing.Reading``) for the built-in variants, for correct
r-ROME computed otherwise (``tests.mutants.CORRECT_ALTERNATIVES``: must stay below MARGIN) and
for the planted bugs of tests/mutants.py on the property that targets each (must exceed it)."""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

from rome_fast.methods.rome.variants import BUILTIN_KEYS, KeyName, get_variant
from rome_fast.testing import (
    MARGIN,
    PROPERTIES,
    CaseParams,
    NumericProperty,
    Reading,
    UpdateFn,
    UpdateUnderTest,
    make_case,
    measure,
    variant_update,
)
from tests.mutants import CORRECT_ALTERNATIVES, UPDATE_MUTANTS

NUMERIC = {name: p for name, p in PROPERTIES.items() if isinstance(p, NumericProperty)}
# planted bug -> the numeric property that targets it (``transposed`` fails the shape checks)
TARGETS = {
    "asymmetric_keys": "exact_insertion",
    "sign_flip": "exact_insertion",
    "no_c_inverse": "null_space",
    "wrong_normalizer": "exact_insertion",
    "bias_ignored": "bias_cancellation",
    "bias_added": "bias_cancellation",
    "scaled_update": "exact_insertion",
    "bf16_factors": "exact_insertion",
}
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def draw_cases(n: int, dtype: torch.dtype, seed: int) -> list[CaseParams]:
    """``n`` cases over check_update's search ranges (κ up to 10³ in float64, 10² below)."""
    rng = np.random.default_rng(seed)
    max_log10_cond = 3.0 if dtype == torch.float64 else 2.0
    return [
        CaseParams(
            seed=int(rng.integers(0, 2**32 - 1)),
            d_in=int(rng.integers(1, 13)),
            d_out=int(rng.integers(1, 13)),
            log10_cond=float(rng.uniform(0, max_log10_cond)),
            angle_deg=float(rng.uniform(0, 60)),
            with_bias=bool(rng.integers(0, 2)),
        )
        for _ in range(n)
    ]


def readings(b: UpdateUnderTest, name: str, cases: list[CaseParams]) -> list[Reading]:
    """The property's reading on every case (an update that raises reads as infinitely off)."""
    found = []
    for params in cases:
        case = make_case(params)
        try:
            found.append(measure(NUMERIC[name].misfit, b, case))
        except Exception:  # the battery reports an update's own error as a failure too
            found.append(Reading(math.inf, 1.0, MARGIN))
    return found


def under_test(
    update: UpdateFn, keys: tuple[KeyName, KeyName], dtype: torch.dtype
) -> UpdateUnderTest:
    return UpdateUnderTest(update, keys[0], keys[1], dtype)


def correct_rows(dtype: torch.dtype, cases: list[CaseParams]) -> tuple[list[str], float]:
    """One row per correct update: the largest value/floor of each property it must satisfy."""
    updates: dict[str, tuple[UpdateFn, tuple[KeyName, KeyName]]] = {
        f"built-in {name}": (variant_update(get_variant(name)), keys)
        for name, keys in BUILTIN_KEYS.items()
    }
    for name, fn in CORRECT_ALTERNATIVES.items():
        updates[f"{name} (r-rome, independent)"] = (variant_update(fn), ("k_star", "k_star"))
    rows, worst = [], 0.0
    for label, (update, keys) in updates.items():
        cells = []
        for name in NUMERIC:
            if name == "minimality" and keys[0] != keys[1]:
                cells.append("—")
                continue
            ratio = max(r.ratio for r in readings(under_test(update, keys, dtype), name, cases))
            worst = max(worst, ratio) if not label.startswith("built-in") else worst
            cells.append(f"{ratio:.3g}")
        rows.append(f"| {label} | {' | '.join(cells)} |")
    return rows, worst


def planted_rows(dtype: torch.dtype, cases: list[CaseParams]) -> tuple[list[str], float]:
    """One row per planted bug: on its targeted property, the largest value/floor (what the
    search finds) and the share of cases that fail."""
    rows, least = [], math.inf
    for name, target in TARGETS.items():
        b = under_test(UPDATE_MUTANTS[name], ("k_star", "k_star"), dtype)
        found = readings(b, target, cases)
        ratios = [r.ratio for r in found]
        caught = sum(not r.passed for r in found) / len(found)
        least = min(least, max(ratios))
        median = float(np.median(ratios))
        rows.append(f"| {name} | {target} | {max(ratios):.3g} | {median:.3g} | {caught:.0%} |")
    return rows, least


def _header(*columns: str) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    lines = [
        "# check_variant bounds: measured floors, correct updates, planted bugs",
        "",
        f"Written by `python -m tests.check_variant_bounds_report --out {args.out} --cases "
        f"{args.cases} --seed {args.seed}` ({platform.machine()} CPU, commit {commit}, "
        f"{datetime.date.today().isoformat()}). A numeric property's bound on a case is "
        f"MARGIN × floor with MARGIN = {MARGIN:g}; its floor is the largest misfit a correct "
        "computation of the declared keys reaches on that case in the checked dtype (the "
        "built-in insertion with C⁻¹ by triangular solves and by an explicit inverse, "
        "`rome_fast.testing.BuiltinInsertion`), never below ε(dtype). Each table: the "
        f"{args.cases} cases drawn (seeded) over the ranges `check_variant` searches "
        "(d_in, d_out in 1..12, κ(C) up to 10³ in float64 and 10² in float32, whitened key "
        "angle up to 60°, with and without bias).",
        "",
    ]
    summary = []
    for dtype_name, dtype in DTYPES.items():
        cases = draw_cases(args.cases, dtype, args.seed)
        correct, worst = correct_rows(dtype, cases)
        planted, least = planted_rows(dtype, cases)
        lines += [
            f"## {dtype_name}: correct updates, largest value/floor over the cases",
            "",
            *_header("update", *NUMERIC),
            *correct,
            "",
            f"## {dtype_name}: planted bugs (tests/mutants.py) on the property that targets each",
            "",
            *_header(
                "planted bug",
                "targeted property",
                "largest value/floor",
                "median value/floor",
                "cases failing",
            ),
            *planted,
            "",
        ]
        summary.append(
            f"{dtype_name}: largest value/floor of an independent correct update {worst:.3g}, "
            f"smallest largest-value/floor of a planted bug {least:.3g}."
        )
    lines += [
        "## Margin",
        "",
        *(line for text in summary for line in (text, "")),
        "A built-in's value/floor is at most 1 by construction (its own computation is one "
        "of the floor's); the independent correct updates are what the margin is sized "
        f"against: MARGIN = {MARGIN:g} is about 4 × their largest ratio (rome_fast/testing.py "
        "says why 4).",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
