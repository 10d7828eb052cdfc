"""``rome eval``: its options and its entry point (a run folder: resumable, locked, reported)."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rome_fast.cli.conform import add_editor_arguments, editor_from_spec, harness_inputs
from rome_fast.cli.inputs import DEFAULT_VARIANTS, hparams_for_model, read_inputs
from rome_fast.cli.options import (
    VARIANTS_HELP,
    add_cluster_arguments,
    add_edit_arguments,
    add_generation_tokens_option,
    add_model_arguments,
    build_editor,
    cluster_from_args,
    corpus_from_args,
    load_from_args,
    torch_dtype,
)
from rome_fast.cli.validate import (
    check_out_folder,
    check_timeout,
    check_variants,
    comma_list,
    int_at_least,
)
from rome_fast.eval.config import DEGRADE_MODES, RunConfig
from rome_fast.eval.data import EvalCase, load_cases, resolve_data_path
from rome_fast.eval.lock import FolderLockedError, run_folder_lock
from rome_fast.infra.cluster import Cluster
from rome_fast.infra.digests import sha256_of

if TYPE_CHECKING:  # the rest is imported where used: `rome eval --help` loads no torch
    from rome_fast.conform.batch_protocol import BatchEditorUnderTest
    from rome_fast.edit.editor import Editor
    from rome_fast.eval.batch_runs import BatchRuns
    from rome_fast.eval.runner import Runner
    from rome_fast.hparams.batched import MethodHParams
    from rome_fast.hparams.defaults import HParams
    from rome_fast.model.loader import LoadedModel
    from rome_fast.solve.rank_one import CovarianceFactor


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Model and edit options (``rome_fast.cli.options``) and the evaluation's own."""
    add_model_arguments(parser, batched=True)
    add_edit_arguments(parser)
    parser.add_argument(
        "--data",
        metavar="FILE",
        default="counterfact/counterfact-val.json",
        help="CounterFact (original or reduced schema) or zsRE (MEND) file; a "
        "relative path is also looked up in the data folder",
    )
    parser.add_argument("--variants", metavar="VARIANTS", default=None, help=VARIANTS_HELP)
    batched = parser.add_argument_group("a batched method instead of ROME's variants")
    batched.add_argument(
        "--method",
        metavar="METHOD",
        default=None,
        help="memit, emmet or alphaedit: the cases edited --batch-size at a time with "
        "Editor.edit_batch, each fact scored after its batch (default: none: --variants)",
    )
    batched.add_argument(
        "--batch-size",
        metavar="N",
        dest="facts_per_batch",
        type=int_at_least(1),
        default=None,
        help="facts per batch of --method, in case order (default: none; required with --method)",
    )
    under_test = parser.add_argument_group("an editor under test instead of ours")
    add_editor_arguments(under_test, required=False)
    under_test.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=None,
        help="with --editor: per edit (with --method: per batch); an edit not done in time "
        "fails its cases, and the editor gets no later one (default: 600)",
    )
    parser.add_argument(
        "--limit", metavar="N", type=int_at_least(1), default=100, help="cases to run"
    )
    parser.add_argument(
        "--offset", metavar="N", type=int_at_least(0), default=0, help="cases skipped first"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--sequential",
        dest="modes",
        action="store_const",
        const="sequential",
        default="single",  # argparse takes the shared dest's default from the first action
        help="edits accumulate on one model (default: each edit alone)",
    )
    mode.add_argument(
        "--modes",
        metavar="MODES",
        dest="modes",
        default="single",
        help="comma-separated: single, sequential",
    )
    parser.add_argument(
        "--glue-every",
        metavar="K",
        type=int_at_least(0),
        default=0,
        help="sequential runs: downstream checks before the first edit and every K edits "
        "(with --method: every K batches) (0: off)",
    )
    parser.add_argument(
        "--glue-data",
        metavar="DIR",
        default=None,
        help="folder with {sst2,mrpc,cola,rte}.jsonl (default: glue/ in the data folder)",
    )
    parser.add_argument(
        "--glue-n", metavar="N", type=int_at_least(1), default=50, help="examples per GLUE task"
    )
    parser.add_argument(
        "--glue-shots",
        metavar="N",
        type=int_at_least(0),
        default=2,
        help="solved examples before each GLUE question",
    )
    parser.add_argument(
        "--score-batch",
        metavar="N",
        dest="batch_size",
        type=int_at_least(1),
        default=16,
        help="prompts per forward when scoring",
    )
    parser.add_argument(
        "--generations",
        metavar="N",
        type=int_at_least(1),
        default=10,
        help="generations per edit for the entropy check",
    )
    add_generation_tokens_option(parser, low=1, default=50)
    parser.add_argument(
        "--collapse-factor",
        metavar="X",
        type=float,
        default=10.0,
        help="flag an edit whose |Δ| exceeds this × the running median",
    )
    parser.add_argument(
        "--collapse-entropy",
        metavar="BITS",
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
        "--out",
        metavar="DIR",
        type=Path,
        required=True,
        help="run folder; rerunning with the same folder resumes",
    )
    add_cluster_arguments(parser)


def config_from_args(
    args: argparse.Namespace,
    model_name: str,
    hparams: HParams,
    method_hparams: MethodHParams | None = None,
) -> RunConfig:
    """The run's options; layer and v* precision as the editor's ``hparams`` hold them, and
    with ``--method`` the method, its ``method_hparams`` and the facts per batch."""
    read_inputs(args)
    method = (
        {}
        if method_hparams is None
        else {
            "method": args.method,
            "facts_per_batch": args.facts_per_batch,
            "method_hparams": dataclasses.asdict(method_hparams),
        }
    )
    return RunConfig(
        model=model_name,
        data=str(args.data),
        variants=(args.method,) if method else tuple(comma_list(args.variants or DEFAULT_VARIANTS)),
        layer=hparams.layer,
        impl=args.impl,
        v_precision=hparams.v_star.precision,
        dtype=args.dtype,
        modes=tuple(comma_list(args.modes)),
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
        # Resolved: a resume from another working directory names the same files.
        stats_npz=None if args.stats_npz is None else str(args.stats_npz.resolve()),
        stats_corpus=None if args.stats_corpus is None else str(args.stats_corpus.resolve()),
        stats_samples=args.stats_samples,
        hparams=hparams.as_record(),
        templates=None if args.fixed_templates is None else tuple(args.fixed_templates),
        input_digests=input_digests(args),
        **method,
    )


def input_digests(args: argparse.Namespace) -> dict[str, str]:
    """The content of every file the run reads besides the model, keyed by option."""
    from rome_fast.eval.glue import TASKS as GLUE_TASKS
    from rome_fast.eval.glue import task_file

    digests = {"data": sha256_of(resolve_data_path(args.data))}
    if args.stats_npz is not None:
        digests["stats_npz"] = sha256_of(args.stats_npz)
    corpus = corpus_from_args(args)
    if corpus is not None:
        digests["stats_corpus"] = corpus.identifier
    if args.glue_every:
        for name in GLUE_TASKS:
            digests[f"glue:{name}"] = sha256_of(task_file(name, args.glue_data))
    return digests


@dataclass(frozen=True)
class LayerCovariances:
    """The factor of C of each layer an editor writes, computed once on the unedited model:
    the ``stats`` of a recipe's editors (a worker's too: it travels whole)."""

    factors: Mapping[int, CovarianceFactor]

    def __call__(self, _loaded: LoadedModel, layer: int) -> CovarianceFactor:
        return self.factors[layer]


@dataclass(frozen=True)
class EditorRecipe:
    """Editors of one class (``--impl naive`` stays naive) and settings, sharing context
    templates and the C of each edited layer computed once on the unedited model (a resumed
    batched stream replays its batches first, and C must not see them): called with a loaded
    model (this process's or a worker's), it returns a new editor of that model."""

    cls: type[Editor]
    hparams: HParams
    seed: int
    templates: list[str]
    covariance: LayerCovariances

    @classmethod
    def of(cls, editor: Editor, layers: Sequence[int] | None = None) -> EditorRecipe:
        """``editor``'s recipe, with the C of ``layers`` (a batched method's; default: the
        editor's layer)."""
        chosen = (editor.layer,) if layers is None else layers
        covariance = LayerCovariances({layer: editor.covariance(layer) for layer in chosen})
        return cls(type(editor), editor.hparams, editor.seed, editor.templates, covariance)

    def __call__(self, loaded: LoadedModel) -> Editor:
        return self.cls(
            loaded,
            hparams=self.hparams,
            seed=self.seed,
            stats=self.covariance,
            templates=self.templates,
        )


def batch_runs(args: argparse.Namespace, editor: Editor) -> BatchRuns:
    """``--method``'s runs: the ``--hparams`` file's method hyperparameters, else the
    per-model ones placed at the editor's layer (as ``Editor.edit_batch`` places them)."""
    from rome_fast.eval.batch_runs import BatchRuns
    from rome_fast.hparams.batched import method_hparams_at

    chosen = args.method_hparams or method_hparams_at(
        args.method, editor.loaded.name, editor.hparams.layer
    )
    return BatchRuns(args.method, chosen, args.facts_per_batch)


def check_batched_options(args: argparse.Namespace) -> None:
    """``--method`` with ``--batch-size``, and without what batched runs do not do (yet)."""
    from rome_fast.hparams.batched import check_method

    if args.method is None:
        if args.facts_per_batch is not None:
            raise ValueError(
                "--batch-size counts the facts of one batch of a batched method: add --method "
                "memit|emmet|alphaedit (the prompts per forward are --score-batch)"
            )
        return
    check_method(args.method)
    if args.facts_per_batch is None:
        raise ValueError("--method edits the cases in batches: add --batch-size N")
    refused = {
        "--variants": args.variants is not None,
        "--impl naive": args.impl == "naive",
        "--degrade": args.degrade != "none",
        # our v* loop's precision: an editor under test optimizes its own targets
        "--precision": args.editor is not None and args.precision != "fp32",
    }
    given = [flag for flag, present in refused.items() if present]
    if given:
        raise ValueError(
            f"{', '.join(given)} not supported with --method (the method is its one "
            "variant): drop them"
        )


def check_editor_timeout(args: argparse.Namespace) -> None:
    """``--timeout`` limits an editor under test's edits (its batches with ``--method``):
    refused without ``--editor``, and positive."""
    if args.timeout is None:
        return
    if args.editor is None:
        raise ValueError("--timeout limits an editor under test's edits: add --editor or drop it")
    check_timeout(args.timeout)


def editor_timeout(args: argparse.Namespace) -> float:
    """The time limit of each edit (or batch) of ``--editor``."""
    from rome_fast.conform.timeouts import DEFAULT_TIMEOUT

    return DEFAULT_TIMEOUT if args.timeout is None else float(args.timeout)


def _run_locked(args: argparse.Namespace, cluster: Cluster | None) -> dict[str, Any]:
    from rome_fast.eval.glue import evaluate_glue
    from rome_fast.eval.runner import Runner

    cases = load_cases(args.data, limit=args.limit, offset=args.offset)
    if args.editor is not None and args.method is not None:
        return _external_batch_runner(args, cases).run()
    if args.editor is not None:
        return _external_runner(args, cases).run()
    editor = build_editor(args)
    loaded = editor.loaded
    batched = None if args.method is None else batch_runs(args, editor)
    recipe = EditorRecipe.of(editor, None if batched is None else batched.hparams.layers)
    cfg = config_from_args(
        args, loaded.name, editor.hparams, None if batched is None else batched.hparams
    )
    if cfg.glue_every and "sequential" in cfg.modes:
        evaluate_glue(
            loaded.model,
            loaded.tokenizer,
            data_dir=cfg.glue_data,
            n=cfg.glue_n,
            shots=cfg.glue_shots,
            seed=cfg.seed,
            check_only=True,
        )
    runner = Runner(
        loaded,
        editor,
        cases,
        cfg,
        args.out,
        fresh_editor=lambda: recipe(loaded),
        progress=cluster is None,
        batched=batched,
    )
    if cluster is None:
        return runner.run()
    from rome_fast.eval.distributed import run_on_cluster

    return run_on_cluster(
        runner,
        recipe,
        cluster,
        model=args.model,
        dtype=torch_dtype(args.dtype),
        seed=args.seed,
    )


def run_eval(args: argparse.Namespace) -> int:
    """Run, write ``summary.json``, the table and the plots; print the table."""
    from rome_fast.eval.report import format_summary, write_report

    # Every option is checked before the model loads and before anything is written.
    read_inputs(args)
    check_batched_options(args)
    check_editor_timeout(args)
    if args.editor is not None and (args.workers is not None or args.ray_address is not None):
        raise ValueError("--workers/--ray-address shard our editor's runs; drop them with --editor")
    cluster = cluster_from_args(args)  # a missing Ray is reported here
    if args.editor is None and args.method is None:
        check_variants(comma_list(args.variants))
    check_out_folder(args.out)
    if args.stats_npz is not None and not args.stats_npz.is_file():
        raise FileNotFoundError(f"--stats-npz {args.stats_npz} does not exist")
    existed = args.out.exists()
    try:
        # Taken before the data and the model load: a second writer is refused at once.
        with run_folder_lock(args.out):
            summary = _run_locked(args, cluster)
    except FolderLockedError:
        raise  # the folder is the other writer's
    except (ValueError, OSError):
        # A first run refused before its first case leaves no folder behind (a rerun
        # with corrected options would be refused as a different run otherwise).
        if not existed and not any(args.out.glob("*.jsonl")):
            shutil.rmtree(args.out, ignore_errors=True)
        raise
    paths = write_report(Path(args.out), summary)
    print(format_summary(summary))
    print("wrote " + ", ".join(str(p) for p in [Path(args.out) / "summary.json", *paths]))
    return 0


def _external_runner(args: argparse.Namespace, cases: list[EvalCase]) -> Runner:
    """The run on an editor under test (``--editor``), with the harness's templates and C."""
    from rome_fast.conform.external import ExternalEditor
    from rome_fast.eval.runner import Runner

    ours_only = {
        "--variants": args.variants,
        "--impl naive": args.impl == "naive" or None,
        "--precision": args.precision != "fp32" or None,
        # flip negates our result's rank-one update, which an editor under test does not return
        "--degrade flip": args.degrade == "flip" or None,
    }
    given = [flag for flag, value in ours_only.items() if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)} set our editor's options; drop them with --editor")
    under_test = editor_from_spec(args.editor, args.editor_path, args.editor_variant)
    loaded = load_from_args(args)
    hparams = hparams_for_model(args, loaded)
    C, templates = harness_inputs(args, loaded, hparams)
    editor = ExternalEditor(
        under_test, loaded, hparams, C, templates, args.seed, editor_timeout(args)
    )
    config = config_from_args(args, loaded.name, hparams)
    config = dataclasses.replace(config, variants=(editor.label,))
    return Runner(loaded, editor, cases, config, args.out)


def _external_batch_runner(args: argparse.Namespace, cases: list[EvalCase]) -> Runner:
    """The batched run on an editor under test (``--editor --method``): each batch through
    the adapter ``rome conform --batch`` uses, with the same harness inputs (templates, C per
    layer, the target settings, the method's hyperparameters as ours get them, seed)."""
    from rome_fast.cli.conform_batch import batch_editor_from_spec, layer_covariances
    from rome_fast.cli.conform_inputs import context_templates
    from rome_fast.conform.batch_external import ExternalBatchEditor
    from rome_fast.conform.batch_run import BatchSettings
    from rome_fast.conform.external import run_label
    from rome_fast.eval.batch_runs import BatchesOnly, BatchRuns
    from rome_fast.eval.runner import Runner
    from rome_fast.hparams.batched import method_hparams_at

    def under_test() -> BatchEditorUnderTest:
        return batch_editor_from_spec(
            args.editor, args.editor_path, args.method, args.editor_variant
        )

    first = under_test()  # a spec that names no editor is refused before the model loads
    loaded = load_from_args(args)
    hparams = hparams_for_model(args, loaded)
    method = args.method_hparams or method_hparams_at(args.method, loaded.name, hparams.layer)
    C = layer_covariances(args, loaded, hparams, method.layers)
    settings = BatchSettings(
        hparams, method, C, context_templates(args, loaded, hparams), args.seed
    )
    timeout = editor_timeout(args)
    made = [first]

    def next_under_test() -> BatchEditorUnderTest:  # the one made first, then new ones
        return made.pop() if made else under_test()

    def writer() -> ExternalBatchEditor:  # per mode; a new editor under test per single batch
        return ExternalBatchEditor(next_under_test, loaded, settings, timeout)

    label = f"{args.method}-{run_label(first)}"
    runs = BatchRuns(args.method, method, args.facts_per_batch, external=writer, label=label)
    editor = {
        "spec": args.editor,
        "variant": args.editor_variant,
        "path": None if args.editor_path is None else str(Path(args.editor_path).resolve()),
        "name": first.name,
    }
    config = dataclasses.replace(
        config_from_args(args, loaded.name, hparams, method), variants=(label,), editor=editor
    )
    return Runner(loaded, BatchesOnly(), cases, config, args.out, progress=True, batched=runs)
