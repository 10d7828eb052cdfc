"""``rome eval`` and ``rome gate``: argument definitions and entry points."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rome_fast.eval.data import load_cases
from rome_fast.eval.gates import check_summary_file
from rome_fast.eval.report import format_summary, write_report
from rome_fast.eval.runs import DEGRADE_MODES, RunConfig, Runner


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Model options (``rome_fast.cli.add_model_arguments``) and the evaluation's own."""
    from rome_fast.cli import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument(
        "--data",
        default="counterfact/counterfact-val.json",
        help="CounterFact (original or reduced schema) or zsRE (MEND) file; a "
        "relative path is also looked up in the data folder",
    )
    parser.add_argument("--variants", default="rome,r-rome,p-rome")
    parser.add_argument("--limit", type=int, default=100, help="cases to run (from --offset)")
    parser.add_argument("--offset", type=int, default=0)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--sequential",
        dest="modes",
        action="store_const",
        const="sequential",
        # argparse takes a shared dest's default from the first option that declares it.
        default="single",
        help="edits accumulate on one model (default: each edit alone)",
    )
    mode.add_argument(
        "--modes", dest="modes", default="single", help="comma-separated: single, sequential"
    )
    parser.add_argument(
        "--glue-every",
        type=int,
        default=0,
        help="sequential runs: downstream checks before the first edit and every K edits (0: off)",
    )
    parser.add_argument("--glue-data", default=None, help="folder with {sst2,mrpc,cola,rte}.jsonl")
    parser.add_argument("--glue-n", type=int, default=50, help="examples per GLUE task")
    parser.add_argument("--glue-shots", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--generations", type=int, default=10, help="generations per edit for the entropy check"
    )
    parser.add_argument("--generation-tokens", type=int, default=50)
    parser.add_argument(
        "--collapse-factor",
        type=float,
        default=10.0,
        help="flag an edit whose |Δ| exceeds this × the running median",
    )
    parser.add_argument(
        "--collapse-entropy",
        type=float,
        default=None,
        help="flag generation entropy (bits) below this (default: half the unedited model's)",
    )
    parser.add_argument(
        "--degrade",
        choices=DEGRADE_MODES,
        default="none",
        help="deliberately break the editor (zero: no update, flip: −ΔW) to "
        "check that a gate fails",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="run folder; rerunning with the same folder resumes"
    )


def config_from_args(args: argparse.Namespace, model_name: str, hparams: Any) -> RunConfig:
    """The run's options; layer and v* precision as the editor's ``hparams`` hold them."""
    return RunConfig(
        model=model_name,
        data=str(args.data),
        variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
        layer=hparams.layer,
        impl=args.impl,
        v_precision=hparams.v_precision,
        dtype=args.dtype,
        modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
        limit=args.limit,
        offset=args.offset,
        seed=args.seed,
        batch_size=args.batch_size,
        n_generations=args.generations,
        generation_tokens=args.generation_tokens,
        collapse_factor=args.collapse_factor,
        collapse_entropy=args.collapse_entropy,
        glue_every=args.glue_every,
        glue_data=args.glue_data,
        glue_n=args.glue_n,
        glue_shots=args.glue_shots,
        degrade=args.degrade,
    )


def fresh_editors(editor: Any) -> Callable[[], Any]:
    """New editors of ``editor``'s class (``--impl naive`` stays naive) and settings, sharing
    its context templates and C, computed once here on the unedited model."""
    templates, covariance = editor.templates, editor.covariance(editor.layer)

    def fresh() -> Any:
        return type(editor)(
            editor.loaded,
            hparams=editor.hparams,
            seed=editor.seed,
            stats=covariance,
            templates=templates,
        )

    return fresh


def run_eval(args: argparse.Namespace) -> int:
    """Run, write ``summary.json``, the table and the plots; print the table."""
    from rome_fast.cli import build_editor

    cases = load_cases(args.data, limit=args.limit, offset=args.offset)
    editor: Any = build_editor(args)
    loaded = editor.loaded
    runner = Runner(
        loaded,
        editor,
        cases,
        config_from_args(args, loaded.name, editor.hparams),
        args.out,
        fresh_editor=fresh_editors(editor),
    )
    summary = runner.run()
    paths = write_report(Path(args.out), summary)
    print(format_summary(summary))
    print("wrote " + ", ".join(str(p) for p in [Path(args.out) / "summary.json", *paths]))
    return 0


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary", type=Path, required=True, help="a run's summary.json")
    parser.add_argument(
        "--baseline",
        action="append",
        required=True,
        help="baseline file or name in fixtures/baselines (repeatable)",
    )
    parser.add_argument(
        "--allow-model-mismatch",
        action="store_true",
        help="compare a run on one model with another model's baseline",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the checks here")


def run_gate(args: argparse.Namespace) -> int:
    """0 when every baseline passes, 1 otherwise (each failing metric printed)."""
    results = [
        check_summary_file(args.summary, b, allow_model_mismatch=args.allow_model_mismatch)
        for b in args.baseline
    ]
    for result in results:
        print(result.report())
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "baseline": r.baseline,
                        "mode": r.mode,
                        "passed": r.passed,
                        "failures": [c.describe() for c in r.failures],
                    }
                    for r in results
                ],
                indent=2,
            )
            + "\n"
        )
    return 0 if all(r.passed for r in results) else 1


def add_baseline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary", type=Path, required=True, help="a measured run's summary")
    parser.add_argument("--mode", choices=("single", "sequential"), required=True)
    parser.add_argument("--name", required=True, help="the baseline's name (and file stem)")
    parser.add_argument("--source", required=True, help="how the run was made: command, machine")
    parser.add_argument(
        "--tolerance",
        type=float,
        required=True,
        help="allowed drop in points (×100 scale) for every metric",
    )
    parser.add_argument("--tolerance-note", default="", help="why this tolerance")
    parser.add_argument(
        "--out", type=Path, default=None, help="default: fixtures/baselines/NAME.json"
    )


def run_baseline(args: argparse.Namespace) -> int:
    """Write a baseline from a measured run (the project's own numbers, never invented)."""
    from rome_fast.eval.gates import baseline_from_summary, baselines_dir

    summary = json.loads(args.summary.read_text())
    baseline = baseline_from_summary(
        summary,
        args.mode,
        name=args.name,
        source=args.source,
        tolerance={"default": args.tolerance},
        tolerance_note=args.tolerance_note,
    )
    out = args.out or baselines_dir() / f"{args.name}.json"
    out.write_text(json.dumps(baseline, indent=2) + "\n")
    print(f"wrote {out}")
    return 0
