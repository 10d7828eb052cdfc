"""``rome gate`` (a run's summary against baselines) and ``rome baseline`` (a baseline written
from a measured run)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rome_fast.cli.outputs import write_json_output
from rome_fast.cli.parsing import deprecated_alias
from rome_fast.cli.validate import check_out_file


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--summary", metavar="FILE", type=Path, required=True, help="a run's summary.json"
    )
    parser.add_argument(
        "--baseline",
        metavar="FILE_OR_NAME",
        action="append",
        required=True,
        help="baseline file, or the name of a shipped baseline (repeatable)",
    )
    parser.add_argument(
        "--allow-model-mismatch",
        action="store_true",
        help="compare a run on one model with another model's baseline",
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        type=Path,
        default=None,
        help="write the checks as JSON here (default: printed only)",
    )
    parser.add_argument(
        "--allow-small-run",
        action="store_true",
        help="compare a run with fewer cases than the baseline (its tolerance does not hold)",
    )


def run_gate(args: argparse.Namespace) -> int:
    """0 when every baseline passes, 1 otherwise (each failing metric printed)."""
    from rome_fast.eval.gates import check_summary_file

    if args.json is not None:
        check_out_file(args.json)
    results = [
        check_summary_file(
            args.summary,
            b,
            allow_model_mismatch=args.allow_model_mismatch,
            allow_small_run=args.allow_small_run,
        )
        for b in args.baseline
    ]
    for result in results:
        print(result.report())
    if args.json is not None:
        write_json_output(
            args.json,
            [
                {
                    "baseline": r.baseline,
                    "mode": r.mode,
                    "passed": r.passed,
                    "failures": [c.describe() for c in r.failures],
                }
                for r in results
            ],
        )
    return 0 if all(r.passed for r in results) else 1


def add_baseline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--summary", metavar="FILE", type=Path, required=True, help="a measured run's summary"
    )
    parser.add_argument("--mode", choices=("single", "sequential"), required=True)
    parser.add_argument(
        "--name", metavar="NAME", required=True, help="the baseline's name (and file stem)"
    )
    parser.add_argument(
        "--source", metavar="TEXT", required=True, help="how the run was made: command, machine"
    )
    parser.add_argument(
        "--tolerance",
        metavar="POINTS",
        type=float,
        required=True,
        help="allowed drop in points (×100 scale) for every metric",
    )
    parser.add_argument("--tolerance-note", metavar="TEXT", default="", help="why this tolerance")
    # A file, so not --out (a folder on every command): one JSON file is --json everywhere.
    written = parser.add_mutually_exclusive_group(required=True)
    written.add_argument(
        "--json",
        metavar="FILE",
        type=Path,
        help="the baseline file to write (to refresh a shipped one, its file in a checkout: "
        "rome_fast/eval/baselines/NAME.json)",
    )
    deprecated_alias(written, "--out", "--json")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing baseline file"
    )


def run_baseline(args: argparse.Namespace) -> int:
    """Write a baseline from a measured run (the project's own numbers, never invented)."""
    from rome_fast.eval.files import read_json_object
    from rome_fast.eval.gates import baseline_from_summary

    out = args.json
    if out.exists() and not args.overwrite:
        raise ValueError(
            f"baseline {out} exists; pass --overwrite to replace it, or choose another --name"
        )
    check_out_file(out)
    summary = read_json_object(args.summary, "run summary (summary.json)")
    baseline = baseline_from_summary(
        summary,
        args.mode,
        name=args.name,
        source=args.source,
        tolerance={"default": args.tolerance},
        tolerance_note=args.tolerance_note,
    )
    write_json_output(out, baseline)
    return 0
