"""The ``rome`` console script: ``edit``, ``demo``, ``sweep``, ``stats``, ``eval``, ``gate``,
``baseline``, ``conform``, ``data fetch``."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rome_fast.cli.inputs import (
    DEFAULT_VARIANT,
    hparams_for_model,
    read_inputs,
)
from rome_fast.cli.options import (
    VARIANTS_HELP,
    add_model_arguments,
    build_editor,
    editor_class,
    load_from_args,
    stats_provider,
    stats_source,
)
from rome_fast.cli.user_variants import SPEC_HELP
from rome_fast.cli.validate import (
    check_device,
    check_layers,
    check_out_file,
    check_out_folder,
    check_variants,
    int_at_least,
    names,
)
from rome_fast.infra.extras import MissingExtraError

if TYPE_CHECKING:
    from rome_fast.hparams.defaults import HParams

    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


def _edit_parser(sub: Subcommands) -> None:
    p = sub.add_parser("edit", help="edit one fact and show its effect")
    add_model_arguments(p)
    p.add_argument("--prompt", required=True, help='prompt with "{}" where the subject goes')
    p.add_argument("--subject", required=True)
    p.add_argument("--target", required=True, help="the new object")
    p.add_argument("--true", dest="target_true", default=None, help="the current object")
    p.add_argument(
        "--variant",
        default=None,
        help=f"a registered variant or a user's ({SPEC_HELP}); default: the hparams "
        f"file's, else {DEFAULT_VARIANT}",
    )
    p.add_argument("--json", type=Path, default=None, help="write the result as JSON here")
    p.add_argument(
        "--generate", type=int_at_least(0), default=20, help="tokens per greedy continuation"
    )
    p.set_defaults(func=_run_edit)


def _run_edit(args: argparse.Namespace) -> int:
    from rome_fast.cli.demo import fact_reports, print_edit_report
    from rome_fast.edit.request import EditRequest

    check_variants([args.variant])
    if args.json is not None:
        check_out_file(args.json)
    editor = build_editor(args)
    editor.warm_up()
    request = EditRequest(
        prompt=args.prompt,
        subject=args.subject,
        target_new=args.target,
        target_true=args.target_true,
    )
    (report,) = fact_reports(editor, request, [args.variant], generate_tokens=args.generate)
    print_edit_report(report)
    report.update(impl=args.impl, v_precision=args.precision)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _demo_parser(sub: Subcommands) -> None:
    p = sub.add_parser("demo", help="the main job: real facts edited on SmolLM2 by each variant")
    add_model_arguments(p)
    p.add_argument("--variants", default=None, help=VARIANTS_HELP)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from rome_fast.cli.demo import run_demo

    variants = check_variants(names(args.variants))
    check_out_folder(args.out)
    editor = build_editor(args)
    editor.warm_up()
    run_demo(editor, variants, args.out)
    return 0


def _sweep_parser(sub: Subcommands) -> None:
    p = sub.add_parser("sweep", help="choose the edited layer: r-ROME on known facts per layer")
    add_model_arguments(p)
    p.add_argument("--data", default="counterfact/counterfact-val.json")
    p.add_argument("--layers", required=True, help="comma-separated layers, e.g. 2,4,6,8")
    p.add_argument("--facts", type=int_at_least(1), default=30, help="known facts edited per layer")
    p.add_argument(
        "--candidates", type=int_at_least(1), default=400, help="cases searched for known facts"
    )
    p.add_argument(
        "--variant",
        default=None,
        help=f"registered or {SPEC_HELP}; default: the hparams file's, else {DEFAULT_VARIANT}",
    )
    p.add_argument("--out", type=Path, default=Path("runs/sweep"))
    p.set_defaults(func=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    from rome_fast.cli.sweep import known_cases, run_sweep
    from rome_fast.edit.editor import Editor
    from rome_fast.eval.data import load_cases

    try:
        layers = [int(x) for x in names(args.layers)]
    except ValueError:
        raise ValueError(f"--layers {args.layers!r}: give comma-separated integers") from None
    check_variants([args.variant])
    check_out_folder(args.out)
    loaded = load_from_args(args)
    check_layers(layers, loaded.adapter.n_layers(loaded.model))
    base = hparams_for_model(args, loaded)
    cases = known_cases(loaded, load_cases(args.data, limit=args.candidates), args.facts)
    stats = stats_provider(args, base)
    cls = editor_class(args)
    # One set of context templates, from the unedited model, for every layer.
    templates = cls(
        loaded, hparams=base, seed=args.seed, stats=stats, templates=args.fixed_templates
    ).templates

    def make_editor(hparams: HParams) -> Editor:
        return cls(loaded, hparams=hparams, seed=args.seed, stats=stats, templates=templates)

    run_sweep(loaded, cases, layers, make_editor, base, variant=args.variant, out=args.out)
    return 0


def _stats_parser(sub: Subcommands) -> None:
    from rome_fast.cli.options import add_cluster_arguments

    p = sub.add_parser("stats", help="compute and cache the key statistics C of the edited layer")
    add_model_arguments(p)
    add_cluster_arguments(p)
    p.set_defaults(func=_run_stats)


def _run_stats(args: argparse.Namespace) -> int:
    """C's sums for the edited layer, from the cache or computed (sharded with --workers)."""
    from rome_fast.stats.collect import layer_stats
    from rome_fast.stats.covariance import statistics_options

    source = stats_source(args)
    loaded = load_from_args(args)
    hparams = hparams_for_model(args, loaded)
    options = statistics_options(hparams.stats, source)
    stats = layer_stats(loaded, hparams.layer, **options)
    print(json.dumps(stats.provenance, indent=2, sort_keys=True))
    return 0


def _eval_parser(sub: Subcommands) -> None:
    from rome_fast.cli.eval import add_eval_arguments

    p = sub.add_parser("eval", help="CounterFact / zsRE evaluation, single or sequential")
    add_eval_arguments(p)
    p.set_defaults(func=_lazy("rome_fast.cli.eval", "run_eval"))


def _gate_parser(sub: Subcommands) -> None:
    from rome_fast.cli.eval import add_gate_arguments

    p = sub.add_parser("gate", help="compare a run's summary with a baseline")
    add_gate_arguments(p)
    p.set_defaults(func=_lazy("rome_fast.cli.eval", "run_gate"))


def _baseline_parser(sub: Subcommands) -> None:
    from rome_fast.cli.eval import add_baseline_arguments

    p = sub.add_parser("baseline", help="write a gate baseline from a measured run")
    add_baseline_arguments(p)
    p.set_defaults(func=_lazy("rome_fast.cli.eval", "run_baseline"))


def _conform_parser(sub: Subcommands) -> None:
    from rome_fast.cli.conform import add_conform_arguments

    p = sub.add_parser("conform", help="conformance properties of a ROME-style editor under test")
    add_conform_arguments(p)
    p.set_defaults(func=_lazy("rome_fast.cli.conform", "run_conform"))


def _data_parser(sub: Subcommands) -> None:
    from rome_fast.infra.fetch import add_fetch_arguments

    p = sub.add_parser("data", help="download the public data files into the data folder")
    actions = p.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser(
        "fetch", help="CounterFact, zsRE or a model's public statistics, checksums recorded"
    )
    add_fetch_arguments(fetch)
    fetch.set_defaults(func=_lazy("rome_fast.infra.fetch", "run_fetch"))


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), name)(args) or 0)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rome", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _edit_parser,
        _demo_parser,
        _sweep_parser,
        _stats_parser,
        _eval_parser,
        _gate_parser,
        _baseline_parser,
        _conform_parser,
        _data_parser,
    ):
        add(sub)
    return parser


# What a user's input can cause; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, MissingExtraError)


def _one_line_warnings(command: str) -> Callable[..., None]:
    """Warnings as ``rome CMD: warning: ...`` lines, like the errors, not file and source."""

    def show(message: Warning | str, *_details: object) -> None:
        print(f"rome {command}: warning: {message}", file=sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():  # puts the caller's warning display back on return
        warnings.showwarning = _one_line_warnings(args.command)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "device", None) is not None:
            check_device(args.device)
        if hasattr(args, "hparams"):
            read_inputs(args)
        return int(args.func(args))
    except USER_ERRORS as err:
        print(f"rome {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = (
            "; rerunning the same command resumes from the last finished case"
            if args.command == "eval"
            else ""
        )
        print(f"rome {args.command}: interrupted{again}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
