"""``rome conform --method M --batch N``: the batched properties on a batched editor under test."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rome_fast.cli.conform_inputs import context_templates
from rome_fast.cli.options import stats_provider

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import Tensor

    from rome_fast.conform.batch_protocol import BatchEditorUnderTest
    from rome_fast.conform.batch_run import BatchReport
    from rome_fast.conform.easyedit_batched import ProjectorSource
    from rome_fast.edit.request import EditRequest
    from rome_fast.hparams.defaults import HParams
    from rome_fast.model.loader import LoadedModel

BATCH_EDITORS = (
    "rome-verify",
    "memit",
    "easyedit-memit",
    "easyedit-emmet",
    "easyedit-alphaedit",
)  # besides module:callable
MAX_FACTS = 8  # the conformance cases (rome_fast.conform.cases.CASES)
# EasyEdit AlphaEdit's P (easyedit_batched.PROJECTOR_SOURCES: building the parser imports no torch)
PROJECTOR_SOURCES = ("code", "float64")


def batch_editor_from_spec(
    spec: str,
    path: str | Path | None,
    method: str,
    variant: str | None,
    projector: ProjectorSource | None = None,
) -> BatchEditorUnderTest:
    """The batched editor a ``--editor SPEC`` names: ``rome-verify`` (``--variant``: its key
    choice), ``memit`` (the original code at ``path``), ``easyedit-<method>`` (EasyEdit's
    checkout at ``path``; ``--projector``: where AlphaEdit's P comes from) or
    ``module:callable``."""
    if projector is not None and spec != "easyedit-alphaedit":
        raise ValueError(
            f"--projector applies to --editor easyedit-alphaedit (whose P the harness can hand "
            f"in), not {spec}; drop it"
        )
    from rome_fast.conform.batch_protocol import (
        OurBatchEditor,
        load_batch_callable,
        shaped_like_public,
    )
    from rome_fast.edit.batch_keys import check_key_choice

    if spec == "rome-verify":
        if path is not None:
            raise ValueError("--editor-path is not used with --editor rome-verify; drop it")
        return OurBatchEditor(check_key_choice(variant or "memit"))
    if variant is not None:
        raise ValueError("--variant (a key choice) applies to --editor rome-verify only; drop it")
    if spec == "memit":
        from rome_fast.conform.public_memit import MemitInputs, PublicMemit

        if method != "memit":
            raise ValueError(
                f"--editor memit is the MEMIT code; it runs --method memit, not {method}"
            )
        if path is None:
            raise ValueError(
                "--editor memit needs the MEMIT checkout: pass --editor-path or set "
                "ROME_EDITOR_PATH"
            )
        return shaped_like_public(PublicMemit(Path(path)), MemitInputs)
    if spec.startswith("easyedit-") and spec in BATCH_EDITORS:
        return easyedit_driver(spec, path, method, projector or "code")
    if ":" in spec:
        return load_batch_callable(spec, None if path is None else str(path))
    raise ValueError(
        f"unknown --editor {spec!r} with --batch: use one of {', '.join(BATCH_EDITORS)} or "
        "module:callable"
    )


def easyedit_driver(
    spec: str, path: str | Path | None, method: str, projector: ProjectorSource = "code"
) -> BatchEditorUnderTest:
    """EasyEdit's MEMIT, EMMET or AlphaEdit, run from the checkout at ``path`` (AlphaEdit's P
    from ``projector``: ``EasyEditBatched.projector_from``)."""
    from rome_fast.conform.batch_protocol import shaped_like_public
    from rome_fast.conform.easyedit_batched import EasyEditBatched, EasyEditInputs

    its_method = spec.removeprefix("easyedit-")
    if method != its_method:
        raise ValueError(
            f"--editor {spec} is EasyEdit's {its_method}; it runs --method {its_method}, "
            f"not {method}"
        )
    if path is None:
        raise ValueError(
            f"--editor {spec} needs EasyEdit's checkout: pass --editor-path or set ROME_EDITOR_PATH"
        )
    driver = EasyEditBatched(spec, Path(path), projector_from=projector)
    return shaped_like_public(driver, EasyEditInputs)


def batches_of(size: int, count: int) -> list[list[EditRequest]]:
    """``count`` batches of ``size`` distinct conformance facts."""
    from rome_fast.conform.cases import CASES

    if size < 1 or count < 1 or size * count > MAX_FACTS:
        raise ValueError(
            f"--batch {size} × {count} batches needs {size * count} distinct facts; the "
            f"conformance cases hold {MAX_FACTS}: lower --batch or --cases/--sequential"
        )
    return [list(CASES[i * size : (i + 1) * size]) for i in range(count)]


def layer_covariances(
    args: argparse.Namespace, loaded: LoadedModel, hparams: HParams, layers: Sequence[int]
) -> dict[int, Tensor]:
    """C of each edited layer from the statistics options: what every batched editor under
    test gets (``rome conform --batch``, ``rome eval --editor --method``)."""
    import torch

    C: dict[int, Tensor] = {}
    for layer in layers:
        loaded.adapter.check_layer(loaded.model, layer)
        found = stats_provider(args, hparams.replace(layer=layer))(loaded, layer)
        # the statistics options give C itself (a Cholesky factor only when a caller passes one)
        assert isinstance(found, torch.Tensor), f"expected the matrix C, got {type(found).__name__}"
        C[layer] = found
    return C


def batch_conformance_report(args: argparse.Namespace, reproducer: str) -> BatchReport:
    """Load what the options name and run every batched property."""
    from rome_fast.conform.batch_properties import KEY_DESCRIPTIONS
    from rome_fast.conform.batch_run import BatchSettings, run_batch_conformance
    from rome_fast.hparams.batched import method_hparams_for
    from rome_fast.hparams.defaults import hparams_for
    from rome_fast.model.loader import load_model

    if args.expect is not None and args.expect not in KEY_DESCRIPTIONS:
        raise ValueError(
            f"--expect {args.expect} names a ROME variant; with --batch expect a key choice: "
            f"{', '.join(KEY_DESCRIPTIONS)}"
        )
    batches = batches_of(args.batch, args.sequential or args.cases)
    # EasyEdit's drivers each run one method; the others default to MEMIT
    method_name = args.method or (
        args.editor.removeprefix("easyedit-") if args.editor.startswith("easyedit-") else "memit"
    )
    editor = batch_editor_from_spec(
        args.editor, args.editor_path, method_name, args.editor_variant, args.projector
    )
    loaded = load_model(args.model, device=args.device, seed=args.seed)
    hparams = hparams_for(args.model, layer=args.layer)
    if args.steps is not None:
        hparams = hparams.replace(v_num_grad_steps=args.steps)
    method = method_hparams_for(method_name, args.model, layer=args.layer)
    settings = BatchSettings(
        hparams,
        method,
        layer_covariances(args, loaded, hparams, method.layers),
        context_templates(args, loaded, hparams),
        args.seed,
    )
    return run_batch_conformance(
        editor,
        loaded,
        batches,
        settings,
        expect=args.expect,
        reproducer=reproducer,
        sequential=args.sequential is not None,
        timeout=args.timeout,
    )
