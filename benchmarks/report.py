"""Markdown tables from a ``--benchmark-json`` file: each group's baseline next to the rest.

    python -m benchmarks.report runs/bench/cpu.json > tables.md

Times are seconds per call: min, median and mean over the rounds. The speedup is the
baseline's median over this row's median (the median resists a stall caused by another
process sharing the cores); the floor is ``benchmarks.floors``' bound and "of floor" is
floor / median. "v* iterations" is each side's forward passes / Adam steps of the v* loop
(both loops stop early at the same loss, so a ratio compares equal work only when they agree).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

# the impls a group's speedups are measured against; "per-fact": n facts one at a time;
# "public": the public code itself (bench_public_memit)
BASELINES = ("naive", "ref", "per-fact", "public")

T = TypeVar("T")


def grouped(
    entries: Iterable[T], group_of: Callable[[T], str], impl_of: Callable[[T], str]
) -> list[tuple[str, T | None, list[T]]]:
    """``(group, its baseline or None, its entries)`` in the order groups first appear."""
    groups: dict[str, list[T]] = {}
    for entry in entries:
        groups.setdefault(group_of(entry), []).append(entry)
    return [
        (group, next((e for e in members if impl_of(e) in BASELINES), None), members)
        for group, members in groups.items()
    ]


def json_groups(entries: Iterable[dict[str, Any]]) -> list[tuple[str, Any, list[Any]]]:
    """``grouped`` for the entries of a ``--benchmark-json`` file."""
    return grouped(entries, lambda e: e["group"] or "", lambda e: e["extra_info"].get("impl"))


def fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def iterations(info: dict[str, Any]) -> str:
    """``forwards / Adam steps`` of the v* loop, empty for a benchmark without one."""
    if "forwards" not in info:
        return ""
    return f"{info['forwards']} / {info.get('adam_steps', info['forwards'] - 1)}"


def tables(data: dict[str, Any]) -> str:
    out = [
        "| group | impl | rounds | v* iterations | min | median | mean | speedup | floor "
        "| of floor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group, base, entries in json_groups(data["benchmarks"]):
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
                iterations(info),
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
