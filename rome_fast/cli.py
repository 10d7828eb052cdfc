"""The ``rome`` console script: ``edit``, ``demo``, ``sweep``, ``stats``, ``eval``, ``gate``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from rome_fast.extras import MissingExtraError
from rome_fast.precision import PRECISIONS

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that loads a model and edits it."""
    parser.add_argument(
        "--model",
        default="smollm2",
        help="smollm2 (embedded), random:<arch>, a local folder or a cached hub name",
    )
    parser.add_argument("--layer", type=int, default=None, help="edited layer (default: per model)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--seed", type=int, default=0, help="seeds templates and optimization")
    parser.add_argument(
        "--impl",
        choices=("fast", "naive"),
        default="fast",
        help="naive follows the public code's compute flow (a speed yardstick)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="matmuls of the v* loop (tf32: CUDA only); keys and the update stay float32",
    )
    stats = parser.add_argument_group("covariance statistics")
    stats.add_argument(
        "--stats-npz",
        type=Path,
        default=None,
        help="a second-moment file in the public ROME .npz format",
    )
    stats.add_argument(
        "--stats-corpus",
        type=Path,
        default=None,
        help="text file or folder for the statistics (default: WikiText-2 when "
        "present, else text sampled from the model)",
    )
    stats.add_argument(
        "--stats-samples",
        type=int,
        default=None,
        help="documents used for the statistics (default: per model)",
    )


def corpus_from_args(args: argparse.Namespace) -> Any:
    """The user's ``--stats-corpus`` (a WikiText folder or a text file), or None (default)."""
    from rome_fast import corpus as corpora

    path = args.stats_corpus
    if path is None:
        return None
    return corpora.wikitext(path) if path.is_dir() else corpora.text_files([path])


def stats_collector(args: argparse.Namespace) -> Callable[..., Any] | None:
    """With ``--workers``/``--ray-address`` (where the command has them), statistics that are
    not cached yet are computed sharded over Ray actors; None: in this process."""
    from rome_fast.cluster import cluster_from_args

    cluster = cluster_from_args(args) if hasattr(args, "workers") else None
    if cluster is None:
        return None
    from rome_fast.stats_parallel import sharded_collector

    return sharded_collector(cluster, args.model, DTYPES[args.dtype], args.seed)


def stats_provider(args: argparse.Namespace, hparams: Any) -> Callable[[Any, int], Any]:
    """C for a layer, from the user's .npz, the user's corpus, or the default corpus."""
    from rome_fast.editor import default_covariance

    return default_covariance(
        hparams,
        corpus=corpus_from_args(args),
        npz_path=args.stats_npz,
        n_samples=args.stats_samples,
        collect=stats_collector(args),
    )


def hparams_from_args(args: argparse.Namespace) -> Any:
    from rome_fast.hparams import hparams_for

    return hparams_for(args.model, layer=args.layer).replace(v_precision=args.precision)


def editor_class(args: argparse.Namespace) -> Any:
    """``Editor``, or ``NaiveEditor`` for ``--impl naive``."""
    if args.impl == "naive":
        from rome_fast.naive import NaiveEditor

        return NaiveEditor
    from rome_fast.editor import Editor

    return Editor


def load_from_args(args: argparse.Namespace) -> Any:
    from rome_fast.models import load_model

    return load_model(args.model, dtype=DTYPES[args.dtype], device=args.device, seed=args.seed)


def build_editor(args: argparse.Namespace) -> Any:
    """Load the model and an editor (fast or naive) with the statistics the options ask for."""
    loaded = load_from_args(args)
    hparams = hparams_from_args(args)
    return editor_class(args)(
        loaded, hparams=hparams, seed=args.seed, stats=stats_provider(args, hparams)
    )


def _edit_parser(sub: Any) -> None:
    p = sub.add_parser("edit", help="edit one fact and show its effect")
    add_model_arguments(p)
    p.add_argument("--prompt", required=True, help='prompt with "{}" where the subject goes')
    p.add_argument("--subject", required=True)
    p.add_argument("--target", required=True, help="the new object")
    p.add_argument("--true", dest="target_true", default=None, help="the current object")
    p.add_argument("--variant", default="r-rome")
    p.add_argument("--json", type=Path, default=None, help="write the result as JSON here")
    p.add_argument("--generate", type=int, default=20, help="tokens per greedy continuation")
    p.set_defaults(func=_run_edit)


def _run_edit(args: argparse.Namespace) -> int:
    from rome_fast.demo import fact_reports, print_edit_report
    from rome_fast.editor import EditRequest

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


def _demo_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="the main job: real facts edited on SmolLM2 by each variant")
    add_model_arguments(p)
    p.add_argument("--variants", default="rome,r-rome,p-rome")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from rome_fast.demo import run_demo

    editor = build_editor(args)
    editor.warm_up()
    run_demo(editor, args.variants.split(","), args.out)
    return 0


def _sweep_parser(sub: Any) -> None:
    p = sub.add_parser("sweep", help="choose the edited layer: r-ROME on known facts per layer")
    add_model_arguments(p)
    p.add_argument("--data", default="counterfact/counterfact-val.json")
    p.add_argument("--layers", required=True, help="comma-separated layers, e.g. 2,4,6,8")
    p.add_argument("--facts", type=int, default=30, help="known facts edited per layer")
    p.add_argument("--candidates", type=int, default=400, help="cases searched for known facts")
    p.add_argument("--variant", default="r-rome")
    p.add_argument("--out", type=Path, default=Path("runs/sweep"))
    p.set_defaults(func=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    from rome_fast.editor import Editor
    from rome_fast.eval.data import load_cases
    from rome_fast.sweep import known_cases, run_sweep

    loaded = load_from_args(args)
    base = hparams_from_args(args)
    cases = known_cases(loaded, load_cases(args.data, limit=args.candidates), args.facts)
    stats = stats_provider(args, base)
    cls = editor_class(args)
    # One set of context templates, from the unedited model, for every layer.
    templates = cls(loaded, hparams=base, seed=args.seed, stats=stats).templates

    def make_editor(hparams: Any) -> Editor:
        editor: Editor = cls(
            loaded, hparams=hparams, seed=args.seed, stats=stats, templates=templates
        )
        return editor

    layers = [int(x) for x in args.layers.split(",")]
    run_sweep(loaded, cases, layers, make_editor, base, variant=args.variant, out=args.out)
    return 0


def _stats_parser(sub: Any) -> None:
    from rome_fast.cluster import add_cluster_arguments

    p = sub.add_parser("stats", help="compute and cache the key statistics C of the edited layer")
    add_model_arguments(p)
    add_cluster_arguments(p)
    p.set_defaults(func=_run_stats)


def _run_stats(args: argparse.Namespace) -> int:
    """C's sums for the edited layer, from the cache or computed (sharded with --workers)."""
    from rome_fast.stats import layer_stats

    collect = stats_collector(args)
    loaded = load_from_args(args)
    hparams = hparams_from_args(args)
    stats = layer_stats(
        loaded,
        hparams.layer,
        corpus=corpus_from_args(args),
        n_samples=args.stats_samples or hparams.mom2_n_samples,
        max_length=hparams.mom2_max_length,
        dtype=getattr(torch, hparams.mom2_dtype),
        npz_path=args.stats_npz,
        collect=collect,
    )
    print(json.dumps(stats.provenance, indent=2, sort_keys=True))
    return 0


def _eval_parser(sub: Any) -> None:
    from rome_fast.eval.cli import add_eval_arguments

    p = sub.add_parser("eval", help="CounterFact / zsRE evaluation, single or sequential")
    add_eval_arguments(p)
    p.set_defaults(func=_lazy("rome_fast.eval.cli", "run_eval"))


def _gate_parser(sub: Any) -> None:
    from rome_fast.eval.cli import add_gate_arguments

    p = sub.add_parser("gate", help="compare a run's summary with a baseline")
    add_gate_arguments(p)
    p.set_defaults(func=_lazy("rome_fast.eval.cli", "run_gate"))


def _baseline_parser(sub: Any) -> None:
    from rome_fast.eval.cli import add_baseline_arguments

    p = sub.add_parser("baseline", help="write a gate baseline from a measured run")
    add_baseline_arguments(p)
    p.set_defaults(func=_lazy("rome_fast.eval.cli", "run_baseline"))


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
    ):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, MissingExtraError) as err:
        print(f"rome {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
