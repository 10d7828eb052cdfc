"""Cases per second of ``rome eval`` in one process and on 1 and 2 Ray workers.

    python -m benchmarks.ray_scaling --out runs/ray-scaling
    python -m benchmarks.ray_scaling --out runs/ray-scaling-tiny --models random:tiny-gpt2 --limit 4

Each run is a fresh ``rome eval`` process on an empty folder (single edits, r-rome), with one
intra-op thread (``OMP_NUM_THREADS=1``) in the driver and so in every worker. Two rates per
run: over the run's own wall time (``summary.json``'s ``execution.wall_seconds``: for Ray,
actor start-up and model loading included) and over the whole command (the driver's model
loading and statistics included). Writes ``scaling.json`` and ``scaling.md`` with the
machine's load (``os.getloadavg``) before and after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DATA = "counterfact/counterfact-val.json"
SETTINGS = ("none", "1", "2")  # workers: "none" runs in one process, without Ray


def run_once(model: str, workers: str, limit: int, out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    command = ["rome", "eval", "--model", model, "--data", DATA, "--limit", str(limit)]
    command += ["--variants", "r-rome", "--generations", "2", "--generation-tokens", "16"]
    command += ["--out", str(out)]
    if workers != "none":
        command += ["--workers", workers]
    load_before = os.getloadavg()
    start = time.perf_counter()
    done = subprocess.run(
        command,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    command_seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    execution = json.loads((out / "summary.json").read_text())["execution"]
    return {
        "model": model,
        "workers": workers,
        "cases": limit,
        "command": " ".join(command),
        "run_seconds": execution["wall_seconds"],
        "command_seconds": command_seconds,
        "cases_per_second_run": limit / execution["wall_seconds"],
        "cases_per_second_command": limit / command_seconds,
        "devices": execution["devices"],
        "retried_cases": execution.get("retried_cases", 0),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def records_equal(folders: list[Path]) -> bool:
    """Whether the runs' per-case records are equal, wall-clock timings aside."""
    from rome_fast.eval.files import read_lines
    from rome_fast.eval.reproducibility import without_timings

    names = sorted(p.name for p in folders[0].glob("*.jsonl"))
    return all(
        without_timings(read_lines(f / n)) == without_timings(read_lines(folders[0] / n))
        for f in folders[1:]
        for n in names
    )


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | workers | cases | run s | cases/s (run) | command s | cases/s (command) "
        "| load 1/5/15 min before → after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        load = " / ".join(f"{x:.1f}" for x in r["load_before"])
        after = " / ".join(f"{x:.1f}" for x in r["load_after"])
        lines.append(
            f"| {r['model']} | {r['workers']} | {r['cases']} | {r['run_seconds']:.1f} "
            f"| {r['cases_per_second_run']:.3f} | {r['command_seconds']:.1f} "
            f"| {r['cases_per_second_command']:.3f} | {load} → {after} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="random:tiny-gpt2,smollm2")
    parser.add_argument("--limit", type=int, default=8, help="cases per run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models.split(","):
        for workers in SETTINGS:
            slug = model.replace(":", "-")
            rows.append(run_once(model, workers, args.limit, args.out / f"{slug}-{workers}"))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version}
    same = {
        model: records_equal([args.out / f"{model.replace(':', '-')}-{w}" for w in SETTINGS])
        for model in args.models.split(",")
    }
    (args.out / "scaling.json").write_text(
        json.dumps({"machine": machine, "runs": rows, "records_equal": same}, indent=2) + "\n"
    )
    notes = "".join(f"\n{m}: records of the three runs equal: {e}\n" for m, e in same.items())
    (args.out / "scaling.md").write_text(table(rows) + notes)
    print(f"wrote {args.out / 'scaling.json'}, {args.out / 'scaling.md'}")


if __name__ == "__main__":
    main()
