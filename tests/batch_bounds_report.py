"""The margin table of docs/results/batched-solve.md ("Battery bounds"):
``python -m tests.batch_bounds_report --cases 200`` prints it.

Batches drawn by the battery's own strategy (seeded); for each numeric property, the largest
value / floor of this package's solves (must stay below MARGIN) and of the mutant of
tests/batch_mutants.py that targets it (must exceed it)."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import random

import torch
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis.errors import NoSuchExample

from rome_fast.testing_batch.battery import MARGIN, PROPERTIES, NumericProperty, Run, measure
from rome_fast.testing_batch.cases import BatchParams, batch_params
from rome_fast.testing_batch.ours import OURS
from tests.batch_mutants import MUTANTS

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def draw_batches(n: int, dtype: torch.dtype, seed: int) -> list[BatchParams]:
    """The first ``n`` batches ``check_batched``'s search draws with ``seed``."""
    drawn: list[BatchParams] = []

    def keep(params: BatchParams) -> bool:
        drawn.append(params)
        return False

    strategy = batch_params(
        max_log10_cond=3.0 if dtype == torch.float64 else 2.0, with_null_space=True
    )
    config = settings(
        max_examples=n,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    with contextlib.suppress(NoSuchExample):
        find(strategy, keep, settings=config, random=random.Random(seed))
    return drawn


def largest_ratio(run: Run, prop: NumericProperty, batches: list[BatchParams]) -> float:
    return max(r.ratio for p in batches for r in measure(prop.misfit, run, p).values())


def rows(dtype: torch.dtype, batches: list[BatchParams]) -> list[str]:
    found = []
    for name, (prop, _) in PROPERTIES.items():
        if not isinstance(prop, NumericProperty):
            continue
        ours = largest_ratio(Run(OURS, dtype), prop, batches)
        planted = [
            f"{mutant} {largest_ratio(Run(m.method, dtype), prop, batches):.3g}"
            for mutant, m in MUTANTS.items()
            if m.caught_by == name
        ]
        found.append(f"| {name} | {ours:.3g} | {', '.join(planted) or '—'} |")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(
        f"`python -m tests.batch_bounds_report --cases {args.cases} --seed {args.seed}` "
        f"({platform.machine()} CPU, {datetime.date.today().isoformat()}); MARGIN = {MARGIN:g}."
    )
    for dtype_name, dtype in DTYPES.items():
        batches = draw_batches(args.cases, dtype, args.seed)
        print(f"\n{dtype_name}, {len(batches)} batches:\n")
        print("| property | ours: largest value/floor | targeting mutant: largest value/floor |")
        print("|---|---|---|")
        print("\n".join(rows(dtype, batches)))


if __name__ == "__main__":
    main()
