"""``rome conform``: run the conformance properties on an editor under test."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from rome_fast.cli.conform_batch import BATCH_EDITORS, PROJECTOR_SOURCES
from rome_fast.cli.conform_inputs import context_templates
from rome_fast.cli.options import (
    add_device_option,
    add_layer_option,
    add_model_option,
    add_seed_option,
    add_stats_arguments,
    stats_provider,
)
from rome_fast.cli.outputs import write_json_output
from rome_fast.cli.parsing import deprecated_alias
from rome_fast.cli.validate import check_out_file, check_timeout
from rome_fast.conform.timeouts import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from torch import Tensor

    from rome_fast.conform.batch_run import BatchReport
    from rome_fast.conform.protocol import EditorUnderTest
    from rome_fast.conform.run import ConformReport
    from rome_fast.hparams.defaults import HParams
    from rome_fast.model.loader import LoadedModel

PATH_VARIABLE = "ROME_EDITOR_PATH"
BUILT_IN = ("rome-verify", "rebuilding-rome", "easyedit-rome", "easyedit-r-rome")
VERDICTS = ("rome", "r-rome", "p-rome", "other")
KEY_VERDICTS = ("memit", "k_star", "k_prompt")  # with --batch: the key choice written at
METHODS = ("memit", "emmet", "alphaedit")
OPTION_OF = {"editor_variant": "--variant"}  # a destination not named after its option


def editor_from_spec(spec: str, path: str | Path | None, variant: str | None) -> EditorUnderTest:
    """The editor a ``--editor SPEC`` names (see ``BUILT_IN``, or ``module:callable``)."""
    from rome_fast.conform.ours import OurEditor
    from rome_fast.conform.protocol import load_callable
    from rome_fast.conform.public import LAYOUTS, PublicEditor

    if spec == "rome-verify":
        if path is not None:
            raise ValueError("--editor-path is not used with --editor rome-verify; drop it")
        return OurEditor(variant or "r-rome")
    if spec in LAYOUTS:
        if path is None:
            raise ValueError(
                f"--editor {spec} needs the checkout to import it from: pass --editor-path "
                f"or set {PATH_VARIABLE}"
            )
        return PublicEditor(LAYOUTS[spec], Path(path), variant)
    if ":" in spec:
        if variant is not None:
            raise ValueError(
                f"--variant does not apply to a module:callable editor ({spec}); drop it"
            )
        return load_callable(spec, path)
    raise ValueError(
        f"unknown --editor {spec!r}: use one of {', '.join(BUILT_IN)} or module:callable"
    )


def add_editor_arguments(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, *, required: bool
) -> None:
    """``--editor SPEC [--editor-path PATH] [--variant VARIANT]``: the editor under test."""
    p.add_argument(
        "--editor",
        metavar="SPEC",
        required=required,
        default=None,
        help=f"the editor under test: {', '.join(BUILT_IN)} or module:callable"
        + ("" if required else " (default: none: ours)"),
    )
    p.add_argument(
        "--editor-path",
        metavar="DIR",
        default=os.environ.get(PATH_VARIABLE),
        help=f"checkout to import the editor from (default: ${PATH_VARIABLE})",
    )
    p.add_argument(
        "--variant",
        dest="editor_variant",
        metavar="VARIANT",
        default=None,
        help="the variant the editor under test runs where it has flags for it: rome, r-rome, "
        "p-rome (default: the editor's own: r-rome for ours)",
    )
    deprecated_alias(p, "--config", "--variant")


def add_conform_arguments(p: argparse.ArgumentParser) -> None:
    add_editor_arguments(p, required=True)
    add_model_option(p)
    p.add_argument(
        "--cases", metavar="N", type=int, default=2, help="edit requests to check (1 to 8)"
    )
    p.add_argument(
        "--expect",
        choices=VERDICTS + KEY_VERDICTS,
        default=None,
        help="the variant it must behave as (default: none: the verdict is reported, not required)",
    )
    p.add_argument(
        "--json",
        metavar="FILE",
        type=Path,
        default=None,
        help="write the report as JSON here (default: printed only)",
    )
    add_layer_option(p)
    add_seed_option(p, "random models, the templates and the editor")
    p.add_argument(
        "--steps",
        metavar="N",
        type=int,
        default=None,
        help="v* loop iterations (default: per model)",
    )
    add_device_option(p)
    p.add_argument(
        "--sequential",
        type=int,
        default=None,
        metavar="N",
        help="N edits in a row without restoring between them (the first N cases), each "
        "checked on the weights as they are then, reverted in reverse order at the end "
        "(default: none: each case starts from the original weights)",
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help="with --batch: the batched method the editor runs (default: memit; an "
        "easyedit-<method> editor's own method)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        metavar="N",
        help="check a batched editor: batches of N facts written at the method's layers "
        "(--cases: how many batches; --variant: ours' key choice memit, k_star or k_prompt; "
        "--expect: the key choice required; --editor: "
        f"{', '.join(BATCH_EDITORS)} or module:callable) (default: none: single-fact ROME "
        "editors)",
    )
    p.add_argument(
        "--projector",
        choices=PROJECTOR_SOURCES,
        default=None,
        help="with --batch --editor easyedit-alphaedit: where its null-space projector P comes "
        "from: code (its own float32 SVD of C) or float64 (the reference's, from the same C, "
        "handed in: tells P's float32 rounding apart from the rest of the update) (default: "
        "code)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="per edit; a slower editor fails edit_completed",
    )
    add_stats_arguments(p)


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run."""
    words = ["rome", "conform", "--editor", args.editor, "--model", args.model]
    for flag in (
        "editor_path",
        "editor_variant",
        "expect",
        "layer",
        "steps",
        "stats_npz",
        "stats_corpus",
        "stats_samples",
        "sequential",
        "timeout",
        "method",
        "batch",
        "projector",
    ):
        value = getattr(args, flag)
        if value is not None:
            words += [OPTION_OF.get(flag, "--" + flag.replace("_", "-")), str(value)]
    words += ["--cases", str(args.cases), "--seed", str(args.seed), "--device", args.device]
    return shlex.join(words)


def run_conform(args: argparse.Namespace) -> int:
    """Exit 0 when the editor conforms, 1 when it does not (whatever it did: the report names
    the property that caught it); misuse of ``rome conform`` raises ValueError (exit 2)."""
    if args.json is not None:
        check_out_file(args.json)
    check_timeout(args.timeout)
    report: ConformReport | BatchReport
    if args.batch is None:
        report = conformance_report(args)
    else:
        from rome_fast.cli.conform_batch import batch_conformance_report

        report = batch_conformance_report(args, command_line(args))
    print(report)
    if args.json is not None:
        write_json_output(args.json, report.to_json())
    return 0 if report.ok else 1


def harness_inputs(
    args: argparse.Namespace, loaded: LoadedModel, hparams: HParams
) -> tuple[Tensor, list[str]]:
    """C (from the statistics options) and seeded context templates, the same for every editor.

    Braces are stripped from the sampled text (as EasyEdit does): the public code formats each
    template twice, so an escaped brace would break it.
    """
    import torch

    loaded.adapter.check_layer(loaded.model, hparams.layer)
    C = stats_provider(args, hparams)(loaded, hparams.layer)
    # the statistics options give C itself (a Cholesky factor only when a caller passes one)
    assert isinstance(C, torch.Tensor), f"expected the matrix C, got a {type(C).__name__}"
    return C, context_templates(args, loaded, hparams)


def conformance_report(args: argparse.Namespace) -> ConformReport:
    """Load what the options name and run every property (``rome conform`` without output)."""
    from rome_fast.conform.cases import conformance_cases
    from rome_fast.conform.run import run_conformance
    from rome_fast.hparams.defaults import hparams_for
    from rome_fast.model.loader import load_model

    if args.method is not None or args.projector is not None or args.expect in KEY_VERDICTS:
        what = (
            f"--method {args.method}"
            if args.method
            else f"--projector {args.projector}"
            if args.projector
            else f"--expect {args.expect}"
        )
        raise ValueError(f"{what} applies to batched editors: add --batch N")
    requests = conformance_cases(args.sequential or args.cases)
    editor = editor_from_spec(args.editor, args.editor_path, args.editor_variant)
    loaded = load_model(args.model, device=args.device, seed=args.seed)
    hparams = hparams_for(args.model, layer=args.layer)
    if args.steps is not None:
        hparams = hparams.replace(v_num_grad_steps=args.steps)
    C, templates = harness_inputs(args, loaded, hparams)
    return run_conformance(
        editor,
        loaded,
        requests,
        hparams=hparams,
        C=C,
        templates=templates,
        seed=args.seed,
        expect=args.expect,
        reproducer=command_line(args),
        sequential=args.sequential is not None,
        timeout=args.timeout,
    )
