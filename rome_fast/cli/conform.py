"""``rome conform``: run the conformance properties on an editor under test."""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from rome_fast.cli.options import add_stats_arguments, stats_provider
from rome_fast.conform.invoke import DEFAULT_TIMEOUT
from rome_fast.conform.protocol import EditorUnderTest, load_callable

if TYPE_CHECKING:
    from torch import Tensor

    from rome_fast.conform.run import ConformReport
    from rome_fast.hparams.defaults import HParams
    from rome_fast.model.loader import LoadedModel

PATH_VARIABLE = "ROME_EDITOR_PATH"
BUILT_IN = ("rome-verify", "rebuilding-rome", "easyedit-rome", "easyedit-r-rome")
VERDICTS = ("rome", "r-rome", "p-rome", "other")


def editor_from_spec(spec: str, path: str | Path | None, config: str | None) -> EditorUnderTest:
    """The editor a ``--editor SPEC`` names (see ``BUILT_IN``, or ``module:callable``)."""
    from rome_fast.conform.ours import OurEditor
    from rome_fast.conform.public import LAYOUTS, PublicEditor

    if spec == "rome-verify":
        if path is not None:
            raise ValueError("--editor-path is not used with --editor rome-verify; drop it")
        return OurEditor(config or "r-rome")
    if spec in LAYOUTS:
        if path is None:
            raise ValueError(
                f"--editor {spec} needs the checkout to import it from: pass --editor-path "
                f"or set {PATH_VARIABLE}"
            )
        return PublicEditor(LAYOUTS[spec], Path(path), config)
    if ":" in spec:
        if config is not None:
            raise ValueError(f"--config does not apply to a module:callable editor ({spec})")
        return load_callable(spec, path)
    raise ValueError(
        f"unknown --editor {spec!r}: use one of {', '.join(BUILT_IN)} or module:callable"
    )


def add_editor_arguments(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, *, required: bool
) -> None:
    """``--editor SPEC [--editor-path PATH] [--config VARIANT]``: the editor under test."""
    p.add_argument(
        "--editor",
        required=required,
        default=None,
        help=f"the editor under test: {', '.join(BUILT_IN)} or module:callable",
    )
    p.add_argument(
        "--editor-path",
        default=os.environ.get(PATH_VARIABLE),
        help=f"checkout to import the editor from (default: ${PATH_VARIABLE})",
    )
    p.add_argument(
        "--config", default=None, help="the editor's configuration: rome, r-rome, p-rome"
    )


def add_conform_arguments(p: argparse.ArgumentParser) -> None:
    add_editor_arguments(p, required=True)
    p.add_argument("--model", required=True, help="smollm2, random:<arch> or a local folder")
    p.add_argument("--cases", type=int, default=2, help="edit requests to check (1 to 8)")
    p.add_argument("--expect", choices=VERDICTS, default=None, help="the variant it must behave as")
    p.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    p.add_argument("--layer", type=int, default=None, help="edited layer (default: per model)")
    p.add_argument("--seed", type=int, default=0, help="seeds the templates and the editor")
    p.add_argument(
        "--steps", type=int, default=None, help="v* loop iterations (default: per model)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--sequential",
        type=int,
        default=None,
        metavar="N",
        help="N edits in a row without restoring between them (the first N cases), each "
        "checked on the weights as they are then, reverted in reverse order at the end",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"per edit; a slower editor fails edit_completed (default {DEFAULT_TIMEOUT:g})",
    )
    add_stats_arguments(p)


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run."""
    words = ["rome", "conform", "--editor", args.editor, "--model", args.model]
    for flag in (
        "editor_path",
        "config",
        "expect",
        "layer",
        "steps",
        "stats_npz",
        "stats_corpus",
        "stats_samples",
        "sequential",
        "timeout",
    ):
        value = getattr(args, flag)
        if value is not None:
            words += ["--" + flag.replace("_", "-"), str(value)]
    words += ["--cases", str(args.cases), "--seed", str(args.seed), "--device", args.device]
    return shlex.join(words)


def run_conform(args: argparse.Namespace) -> int:
    """Exit 0 when the editor conforms, 1 when it does not (whatever it did: the report names
    the property that caught it); misuse of ``rome conform`` raises ValueError (exit 2)."""
    report = conformance_report(args)
    print(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.json}")
    return 0 if report.ok else 1


def harness_inputs(
    args: argparse.Namespace, loaded: LoadedModel, hparams: HParams
) -> tuple[Tensor, list[str]]:
    """C (from the statistics options) and seeded context templates, the same for every editor.

    Braces are stripped from the sampled text (as EasyEdit does): the public code formats each
    template twice, so an escaped brace would break it.
    """
    import torch

    from rome_fast.edit.templates import generate_context_templates

    loaded.adapter.check_layer(loaded.model, hparams.layer)
    C = stats_provider(args, hparams)(loaded, hparams.layer)
    # the statistics options give C itself (a Cholesky factor only when a caller passes one)
    assert isinstance(C, torch.Tensor), f"expected the matrix C, got a {type(C).__name__}"
    fixed = getattr(args, "fixed_templates", None)  # --templates FILE, where the command has it
    if fixed is not None:
        return C, list(fixed)
    templates = [
        t.replace("{{", "").replace("}}", "")
        for t in generate_context_templates(
            loaded.model,
            loaded.tokenizer,
            hparams.context_template_schedule,
            seed=args.seed,
            top_k=hparams.context_template_top_k,
        )
    ]
    return C, templates


def conformance_report(args: argparse.Namespace) -> ConformReport:
    """Load what the options name and run every property (``rome conform`` without output)."""
    from rome_fast.conform.cases import conformance_cases
    from rome_fast.conform.run import run_conformance
    from rome_fast.hparams.defaults import hparams_for
    from rome_fast.model.loader import load_model

    if not args.timeout > 0:
        raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    requests = conformance_cases(args.sequential or args.cases)
    editor = editor_from_spec(args.editor, args.editor_path, args.config)
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
