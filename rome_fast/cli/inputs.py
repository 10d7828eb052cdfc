"""Inputs users already hold, on every command that edits: ``--hparams``, ``--templates``,
and user variants in ``--variant`` / ``--variants``.

``read_inputs`` runs once per command, before any model is loaded: it reads the files
(every note printed on stderr), loads user variants, and fills in the variant defaults.
A variant option given on the command line wins over the hparams file's variant, with a
note when they differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rome_fast.cli.validate import comma_list

if TYPE_CHECKING:  # imported where used: printing the options loads no torch
    from rome_fast.hparams.defaults import HParams
    from rome_fast.hparams.files import HParamsFile
    from rome_fast.model.loader import LoadedModel

DEFAULT_VARIANT = "r-rome"
DEFAULT_VARIANTS = "rome,r-rome,p-rome"


def add_hparams_argument(parser: argparse.ArgumentParser, *, batched: bool = False) -> None:
    """``--hparams``; ``batched`` where the command also edits with ``--method``."""
    with_method = (
        "; with --method: the original MEMIT code's JSON or EasyEdit's MEMIT / EMMET / "
        "AlphaEdit yaml, which set the method's layers and weights"
        if batched
        else ""
    )
    parser.add_argument(
        "--hparams",
        metavar="FILE",
        type=Path,
        default=None,
        help="hyperparameters from a file: the paper's code's JSON, EasyEdit's ROME / R-ROME "
        "yaml, or our field names; its variant flags choose the default variant"
        f"{with_method} (default: the model's defaults)",
    )


def add_templates_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--templates",
        metavar="FILE",
        type=Path,
        default=None,
        help='fixed context templates: one per line or a JSON list, each with one "{}" '
        '("{}" itself is added first if missing) (default: sampled from the model, seeded)',
    )


def note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def read_inputs(args: argparse.Namespace) -> None:
    """Read ``--hparams`` and ``--templates`` into ``args.hparams_file`` and
    ``args.fixed_templates``; resolve ``args.variant`` / ``args.variants``. Once per ``args``:
    ``main`` calls it, and so does every entry point that may be handed parsed options.
    ``--templates`` and the variant options are read where the command offers them."""
    from rome_fast.cli.user_variants import registered_variant_name
    from rome_fast.edit.template_files import read_templates

    if getattr(args, "inputs_read", False):
        return
    args.inputs_read = True
    hfile = _read_hparams(args)
    args.fixed_templates = None
    templates = getattr(args, "templates", None)  # where the command offers --templates
    if templates is not None:
        args.fixed_templates, added = read_templates(templates)
        if added:
            note(added)
    if hfile is not None:
        for line in hfile.notes:
            note(line)
        if args.layer is not None and hfile.layer not in (None, args.layer):
            note(f"{hfile.path}: --layer {args.layer} replaces the file's layer {hfile.layer}")
    file_variant = hfile.variant if hfile is not None else None
    for option, default in (("variant", DEFAULT_VARIANT), ("variants", DEFAULT_VARIANTS)):
        if not hasattr(args, option) or getattr(args, "method", None) is not None:
            continue  # the command has no such option, or edits with a batched method
        if getattr(args, "editor", None) is not None:
            continue  # an editor under test: our variants do not apply (refused if given)
        given: str | None = getattr(args, option)
        chosen = comma_list(given or file_variant or default)
        if given and hfile is not None and file_variant and chosen != [file_variant]:
            note(
                f"{hfile.path}: the file's code runs {file_variant!r}; running "
                f"{', '.join(chosen)} as --{option} asks"
            )
        resolved = [registered_variant_name(v) for v in chosen]
        setattr(args, option, ",".join(resolved))


def _read_hparams(args: argparse.Namespace) -> HParamsFile | None:
    """``--hparams`` into ``args.hparams_file`` (what every method shares) and, with
    ``--method``, ``args.method_hparams`` (the batched method's own, from its file)."""
    from rome_fast.hparams.batch_files import read_batch_hparams_file
    from rome_fast.hparams.files import read_hparams_file

    method = getattr(args, "method", None)
    args.method_hparams = None
    args.hparams_file = None
    if args.hparams is None:
        return None
    if method is None:
        hfile = read_hparams_file(args.hparams)
        args.hparams_file = hfile
        return hfile
    batch_file = read_batch_hparams_file(args.hparams, method)
    if args.layer is not None:
        raise ValueError(
            f"--hparams {args.hparams} names the edited layers "
            f"{list(batch_file.method_hparams.layers)}: drop --layer or change the file's layers"
        )
    args.method_hparams = batch_file.method_hparams
    args.hparams_file = batch_file.shared
    return batch_file.shared


def hparams_for_model(args: argparse.Namespace, loaded: LoadedModel) -> HParams:
    """Per-model defaults, then the hparams file, then ``--layer`` and ``--precision`` (where
    the command edits); the file's module names checked against ``loaded``."""
    from rome_fast.hparams.defaults import hparams_for
    from rome_fast.hparams.files import check_against_model

    hfile = args.hparams_file
    layer = args.layer if args.layer is not None else (hfile.layer if hfile else None)
    hparams = hparams_for(args.model, layer=layer)
    if hfile is not None:
        hparams = hfile.apply(hparams)
        if args.layer is not None:
            hparams = hparams.replace(layer=args.layer)
        check_against_model(hfile, loaded.model, loaded.adapter, hparams.layer)
    precision = getattr(args, "precision", None)  # rome stats computes C and edits nothing
    return hparams if precision is None else hparams.replace(v_precision=precision)
