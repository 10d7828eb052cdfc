"""The ``rome`` console script: the parser of every command, and ``edit``, ``demo``, ``sweep``
and ``stats``, whose work is a few calls. Building the parser imports no torch and no
transformers (``rome --help`` is instant): every command imports what it needs when it runs."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rome_fast.cli.inputs import DEFAULT_VARIANT, hparams_for_model, read_inputs
from rome_fast.cli.options import (
    VARIANTS_HELP,
    add_cluster_arguments,
    add_edit_arguments,
    add_generation_tokens_option,
    add_model_arguments,
    build_editor,
    editor_class,
    load_from_args,
    stats_provider,
    stats_source,
)
from rome_fast.cli.outputs import write_json_output
from rome_fast.cli.parsing import HelpFormatter, add_command, deprecated_alias
from rome_fast.cli.validate import (
    SPEC_HELP,
    check_device,
    check_layers,
    check_out_file,
    check_out_folder,
    check_variants,
    comma_integers,
    comma_list,
    default_device,
    int_at_least,
)
from rome_fast.infra.errors import RunStoppedError
from rome_fast.infra.extras import MissingExtraError

if TYPE_CHECKING:
    from rome_fast.hparams.defaults import HParams

    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

EDIT_GENERATION_TOKENS = 20  # rome edit's continuation length
DESCRIPTION = """\
rome-verify: edit facts in language models with ROME, r-ROME and p-ROME, check the edits,
and gate your own ROME-style editor. Every command loads the embedded SmolLM2 unless --model
names another model (random:tiny-gpt2 is a seeded random model for quick tries), and runs on
CUDA when it is present, else on the CPU. Run `rome COMMAND --help` for a command's options
and examples."""

EXAMPLES = (
    "rome edit --model random:tiny-gpt2 --prompt '{} is located in' --subject 'The tower' "
    "--target-new Rome",
    "rome conform --editor rome-verify --model random:tiny-gpt2 --cases 1 --steps 5 "
    "--expect r-rome",
)

# A run, a baseline written from it and the gate against it, in seconds on a tiny model.
MEASURE_AND_GATE = (
    "rome eval --model random:tiny-gpt2 --data counterfact/counterfact-rome-schema-sample.json "
    "--limit 2 --modes single --generations 2 --generation-tokens 8 --out runs/tiny",
    "rome baseline --summary runs/tiny/summary.json --mode single --name tiny "
    "--source 'rome eval on random:tiny-gpt2, 2 cases' --tolerance 1 "
    "--json runs/tiny-baseline.json",
    "rome gate --summary runs/tiny/summary.json --baseline runs/tiny-baseline.json",
)

FETCH_EXAMPLES = (
    "rome data fetch counterfact zsre",
    "rome data fetch stats --model gpt2-xl --layers 17",
)


def _variant_help(default: str, extra: str = "") -> str:
    return (
        f"a registered variant or {SPEC_HELP} (default: the hparams file's, else {default}{extra})"
    )


def _edit_parser(sub: Subcommands) -> None:
    p = add_command(
        sub,
        "edit",
        "edit one fact (or many at once) and show its effect",
        "Edit one fact (prompt, subject, new object) with one variant and print the next-token "
        "probabilities of the new and the true object before and after, greedy continuations, "
        "|Δ| and the residuals at k* and k_prompt. --json writes the same as one JSON object. "
        "With --method memit, emmet or alphaedit, edit every fact of --requests (a JSON list "
        "of objects with the fields prompt, subject, target_new and optionally target_true, "
        "case_id) in one batch instead: one line per fact (probabilities, residuals) and one "
        "for the batch (per-layer |Δ|, conditioning, seconds); --json writes each fact's "
        "record and the batch's. The model is left as it was: an edit on the command line is "
        "a measurement.",
        [
            "rome edit --model random:tiny-gpt2 --prompt '{} is located in' --subject 'The tower' "
            "--target-new Rome --target-true Paris --generation-tokens 5",
            "rome edit --model random:tiny-gpt2 --prompt '{} is located in' --subject 'The tower' "
            "--target-new Rome --variant p-rome --json runs/help-edit.json",
            "rome edit --model random:tiny-gpt2 --method emmet --requests fixtures/inputs/"
            "facts.json --keys k_prompt --stats-samples 8 --json runs/help-batch.json",
        ],
    )
    add_model_arguments(p, batched=True)
    add_edit_arguments(p)
    one_fact = "(default: none; required to edit one fact, refused with --method)"
    p.add_argument(
        "--prompt",
        metavar="TEXT",
        default=None,
        help=f'prompt with "{{}}" where the subject goes {one_fact}',
    )
    p.add_argument(
        "--subject", metavar="TEXT", default=None, help=f"the subject the fact is about {one_fact}"
    )
    # The names of EditRequest's fields (and of the JSON record): target_new, target_true.
    new = p.add_mutually_exclusive_group()
    new.add_argument(
        "--target-new", metavar="TEXT", default=None, help=f"the new object {one_fact}"
    )
    deprecated_alias(new, "--target", "--target-new")
    p.add_argument(
        "--target-true",
        metavar="TEXT",
        default=None,
        help="the current object (default: none: its probability is not shown)",
    )
    deprecated_alias(p, "--true", "--target-true")
    p.add_argument(
        "--variant",
        metavar="VARIANT",
        default=None,
        help=_variant_help(DEFAULT_VARIANT, "; refused with --method"),
    )
    p.add_argument(
        "--method",
        metavar="METHOD",
        default=None,
        help="memit, emmet or alphaedit: edit every fact of --requests in one batch, with the "
        "method's per-model hyperparameters (default: none: one fact with --variant)",
    )
    p.add_argument(
        "--requests",
        metavar="FILE",
        type=Path,
        default=None,
        help="the facts of --method: a JSON list of objects with EditRequest's fields "
        "(default: none)",
    )
    p.add_argument(
        "--keys",
        metavar="KEYS",
        default=None,
        help="the key each fact is written at under --method: memit (the public code's ½ bare "
        "prompt + ½ prefix mean), k_star (mean over the templates) or k_prompt (the bare "
        "prompt) (default: memit)",
    )
    p.add_argument(
        "--json",
        metavar="FILE",
        type=Path,
        default=None,
        help="write the result as JSON here (default: printed only)",
    )
    add_generation_tokens_option(
        p, low=0, default=None, stated=f"{EDIT_GENERATION_TOKENS}; refused with --method"
    )
    deprecated_alias(p, "--generate", "--generation-tokens")
    p.set_defaults(func=_run_edit)


def _run_edit(args: argparse.Namespace) -> int:
    from rome_fast.cli.batch_edit import check_batch_options, run_batch_edit
    from rome_fast.cli.demo import fact_reports, print_edit_report
    from rome_fast.edit.request import EditRequest

    check_batch_options(args)
    if args.method is not None:
        return run_batch_edit(args)
    check_variants([args.variant])
    if args.json is not None:
        check_out_file(args.json)
    editor = build_editor(args)
    editor.warm_up()
    request = EditRequest(
        prompt=args.prompt,
        subject=args.subject,
        target_new=args.target_new,
        target_true=args.target_true,
    )
    tokens = args.generation_tokens
    (report,) = fact_reports(
        editor,
        request,
        [args.variant],
        generate_tokens=EDIT_GENERATION_TOKENS if tokens is None else tokens,
    )
    print_edit_report(report)
    report.update(impl=args.impl, v_precision=args.precision)
    if args.json is not None:
        write_json_output(args.json, report)
    return 0


def _demo_parser(sub: Subcommands) -> None:
    p = add_command(
        sub,
        "demo",
        "the main job: real facts edited on SmolLM2 by each variant",
        "Edit five facts SmolLM2 knows with each variant, each edit on the unedited model, and "
        "write a table of before/after probabilities, residuals and |Δ| (table.txt), the "
        "records (demo.json) and a plot (demo.png) into --out. It is what `nox -s demo` runs.",
        ["rome demo --model random:tiny-gpt2 --stats-samples 8 --out runs/help-demo"],
    )
    add_model_arguments(p)
    add_edit_arguments(p)
    p.add_argument("--variants", metavar="VARIANTS", default=None, help=VARIANTS_HELP)
    p.add_argument(
        "--out", metavar="DIR", type=Path, default=Path("runs/demo"), help="output folder"
    )
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from rome_fast.cli.demo import run_demo

    variants = check_variants(comma_list(args.variants))
    check_out_folder(args.out)
    editor = build_editor(args)
    editor.warm_up()
    run_demo(editor, variants, args.out)
    return 0


def _sweep_parser(sub: Subcommands) -> None:
    p = add_command(
        sub,
        "sweep",
        "choose the edited layer: r-ROME on known facts per layer",
        "Choose the edited layer by measurement: find facts the model knows, edit each alone at "
        "every candidate layer and score it with the CounterFact metrics; the layer with the "
        "best score S wins. Writes sweep.json, sweep.md and sweep.png into --out.",
        ["rome sweep --layers 2,4,6,8 --facts 16"],
    )
    add_model_arguments(p)
    add_edit_arguments(p)
    p.add_argument(
        "--data",
        metavar="FILE",
        default="counterfact/counterfact-val.json",
        help="CounterFact file the facts come from (a relative path is also looked up in the "
        "data folder)",
    )
    p.add_argument(
        "--layers", metavar="N,N", required=True, help="comma-separated layers, e.g. 2,4,6,8"
    )
    p.add_argument(
        "--facts", metavar="N", type=int_at_least(1), default=30, help="known facts per layer"
    )
    p.add_argument(
        "--candidates",
        metavar="N",
        type=int_at_least(1),
        default=400,
        help="cases searched for known facts",
    )
    p.add_argument(
        "--variant", metavar="VARIANT", default=None, help=_variant_help(DEFAULT_VARIANT)
    )
    p.add_argument(
        "--out", metavar="DIR", type=Path, default=Path("runs/sweep"), help="output folder"
    )
    p.set_defaults(func=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    from rome_fast.cli.sweep import known_cases, run_sweep
    from rome_fast.edit.editor import Editor
    from rome_fast.eval.data import load_cases

    layers = comma_integers(args.layers, "--layers")
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
    p = add_command(
        sub,
        "stats",
        "compute and cache the key statistics C of the edited layer",
        "Compute the uncentered second moment C of the edited layer's keys (or find it in the "
        "cache) and print its provenance as JSON. The editing commands compute C the same way "
        "on first use; this command does it ahead of time, sharded over Ray with --workers.",
        ["rome stats --model random:tiny-gpt2 --stats-samples 64"],
    )
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

    p = add_command(
        sub,
        "eval",
        "CounterFact / zsRE evaluation, single or sequential",
        "Evaluate editors on CounterFact or zsRE: each case edited alone (--modes single) or "
        "all accumulating on one model (sequential), scored with the paper's metrics, with "
        "collapse detection and optional GLUE checks. --out is the run folder: summary.json, "
        "a table and plots; rerunning the same command resumes an interrupted run. With "
        "--method memit|emmet|alphaedit --batch-size N the cases are edited N at a time, "
        "each fact scored after its batch (alone, or batches in sequence with --sequential); "
        "--editor SPEC has an editor under test write them (as rome conform --batch does).",
        [
            "rome eval --model random:tiny-gpt2 --data counterfact/counterfact-rome-schema-sample"
            ".json --limit 2 --generations 2 --generation-tokens 8 --out runs/help-eval",
            "rome eval --model random:tiny-gpt2 --data counterfact/counterfact-rome-schema-sample"
            ".json --method emmet --batch-size 2 --limit 2 --generations 1 --generation-tokens 4 "
            "--stats-samples 8 --out runs/help-eval-batches",
            "rome eval --model random:tiny-gpt2 --data counterfact/counterfact-rome-schema-sample"
            ".json --editor rome-verify --method memit --batch-size 2 --limit 2 --generations 1 "
            "--generation-tokens 4 --stats-samples 8 --out runs/help-eval-editor-batches",
        ],
    )
    add_eval_arguments(p)
    p.set_defaults(func=LazyCommand("rome_fast.cli.eval", "run_eval"))


def _gate_parser(sub: Subcommands) -> None:
    from rome_fast.cli.gate import add_gate_arguments

    p = add_command(
        sub,
        "gate",
        "compare a run's summary with a baseline",
        "Compare a run's summary.json with one or more baselines (a file, or the name of a "
        "shipped one): exit 0 when every metric is within its tolerance, 1 when one is not "
        "(each failing metric printed).",
        MEASURE_AND_GATE,
    )
    add_gate_arguments(p)
    p.set_defaults(func=LazyCommand("rome_fast.cli.gate", "run_gate"))


def _baseline_parser(sub: Subcommands) -> None:
    from rome_fast.cli.gate import add_baseline_arguments

    p = add_command(
        sub,
        "baseline",
        "write a gate baseline from a measured run",
        "Write a baseline for `rome gate` from a measured run's summary.json: the run's own "
        "numbers, with the tolerance you state and why.",
        MEASURE_AND_GATE,
    )
    add_baseline_arguments(p)
    p.set_defaults(func=LazyCommand("rome_fast.cli.gate", "run_baseline"))


def _conform_parser(sub: Subcommands) -> None:
    from rome_fast.cli.conform import add_conform_arguments

    p = add_command(
        sub,
        "conform",
        "conformance properties of a ROME-style editor under test",
        "Run black-box conformance properties on a ROME-style editor (ours, the paper's code, "
        "EasyEdit's, or your module:callable) with the same model, request, layer, templates, "
        "C and seed as our reference, and name the variant it behaves as. Exit 0 when the "
        "verdict equals --expect and every required property passes, 1 when not. With --batch "
        "N, a batched editor (--method memit, emmet or alphaedit; ours, the original MEMIT "
        "code, EasyEdit's, or your module:callable) on batches of N facts, and the key choice "
        "it writes at.",
        [
            "rome conform --editor rome-verify --variant p-rome --model random:tiny-gpt2 "
            "--cases 1 --steps 5 --expect p-rome --json runs/help-conform.json",
            "rome conform --editor rome-verify --method emmet --batch 2 --cases 1 --steps 3 "
            "--stats-samples 8 --model random:tiny-gpt2 --expect memit",
        ],
    )
    add_conform_arguments(p)
    p.set_defaults(func=LazyCommand("rome_fast.cli.conform", "run_conform"))


def _data_parser(sub: Subcommands) -> None:
    from rome_fast.cli.data import add_fetch_arguments

    p = add_command(
        sub,
        "data",
        "download the public data files into the data folder",
        "Download the public data files (needs the network).",
        FETCH_EXAMPLES,
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch = add_command(
        actions,
        "fetch",
        "CounterFact, zsRE or a model's public statistics, checksums recorded",
        "Download CounterFact, zsRE or a model's public key statistics (for --stats-npz) into "
        "the data folder. The first download records each file's SHA-256 and size in "
        "checksums.json beside it; later fetches verify against that record.",
        FETCH_EXAMPLES,
    )
    add_fetch_arguments(fetch)
    fetch.set_defaults(func=LazyCommand("rome_fast.cli.data", "run_fetch"))


@dataclass(frozen=True)
class LazyCommand:
    """A command's entry point, imported when the command runs (not when the parser is built:
    its module may load torch)."""

    module: str
    function: str

    def __call__(self, args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(self.module), self.function)(args) or 0)


def package_version() -> str:
    """The installed distribution's version, else (a plain checkout) the project file's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rome-verify")
    except PackageNotFoundError:
        import tomllib

        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rome",
        description=DESCRIPTION,
        epilog="examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rome {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
        if hasattr(args, "device"):
            args.device = args.device or default_device()
            check_device(args.device)
        if hasattr(args, "hparams"):
            read_inputs(args)
        return int(args.func(args))
    except USER_ERRORS as err:
        print(f"rome {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RunStoppedError as err:
        print(f"rome {args.command}: stopped: {err}", file=sys.stderr)
        return 1
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
