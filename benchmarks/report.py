"""Markdown tables from a ``--benchmark-json`` file: each group's baseline next to the rest.

    python -m benchmarks.report runs/bench/cpu.json > tables.md

Times are seconds per call: min, median and mean over the rounds. The speedup is the
baseline's median over this row's median (the median resists a stall caused by another
process sharing the cores); the floor is ``benchmarks.floors``' bound and "of floor" is
floor / median.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

BASELINES = ("naive", "ref")


def fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def tables(data: dict[str, Any]) -> str:
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in data["benchmarks"]:
        groups.setdefault(entry["group"] or "", []).append(entry)
    out = [
        "| group | impl | rounds | min | median | mean | speedup | floor | of floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for group, entries in groups.items():
        base = next((e for e in entries if e["extra_info"].get("impl") in BASELINES), None)
        for e in sorted(entries, key=lambda e: e is not base):
            s, info = e["stats"], e["extra_info"]
            speedup = (
                f"{base['stats']['median'] / s['median']:.2f}×"
                if base is not None and e is not base
                else ""
            )
            bound = info.get("floor_seconds")
            share = f"{bound / s['median']:.1%}" if bound else ""
            row = [
                group,
                info.get("impl", ""),
                str(s["rounds"]),
                fmt(s["min"]),
                fmt(s["median"]),
                fmt(s["mean"]),
                speedup,
                fmt(bound) if bound else "",
                share,
            ]
            out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="benchmark JSON → markdown tables")
    parser.add_argument("json", type=Path)
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text())
    m = data["machine_info"]
    print(
        f"Machine: {m.get('cpu_name')}, torch {m.get('torch')}, {m.get('torch_threads')} "
        f"threads; conditions: {json.dumps(data.get('conditions'), default=str)}\n"
    )
    print(tables(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
