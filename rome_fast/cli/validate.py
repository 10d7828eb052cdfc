"""Command-line input checked before anything is loaded or written: each check names the
problem and the fix (``rome`` prints it as one line and exits with code 2)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

# A user's variant as --variant / --variants take it (rome_fast.cli.user_variants).
SPEC_HELP = "module:function or file.py:function, optionally @k_star / @k_prompt"


def int_at_least(low: int) -> type[int]:
    """An argparse ``type`` for integers ``>= low`` (argparse reports a bad one in one line)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse  # type: ignore[return-value]


def comma_list(text: str) -> list[str]:
    """A comma-separated option (``rome,r-rome``, ``2,4,6``) as its non-empty items, stripped:
    every comma-separated option is split here."""
    return [item.strip() for item in text.split(",") if item.strip()]


def comma_integers(text: str, option: str) -> list[int]:
    """A comma-separated option of integers (``--layers 2,4,6``)."""
    try:
        return [int(item) for item in comma_list(text)]
    except ValueError:
        raise ValueError(f"{option} {text!r}: give comma-separated integers, e.g. 2,4,6") from None


def check_variants(variants: Sequence[str]) -> list[str]:
    """Every name must be a registered variant (``rome_fast.methods.rome.variants``)."""
    from rome_fast.methods.rome.variants import get_variant

    if not variants:
        raise ValueError("no variant given; pass e.g. --variants rome,r-rome,p-rome")
    for name in variants:
        get_variant(name)  # raises, naming the available ones
    return list(variants)


def default_device() -> str:
    """``cuda`` when this machine has it, else ``cpu``: every command's ``--device`` default."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> None:
    """The device must exist on this machine."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as err:
        raise ValueError(f"--device {device!r} is not a device ({err}); use cpu or cuda") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but CUDA is not available here; use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps, but MPS is not available here; use --device cpu")


def check_out_folder(path: Path, option: str = "--out") -> None:
    """``path`` is a folder or can become one."""
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise ValueError(f"{option} {path}: {part} is a file, not a folder; name a folder")


def check_out_file(path: Path, option: str = "--json") -> None:
    """``path`` is a file or can become one (not a folder)."""
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; name a file such as {path / 'out.json'}")
    check_out_folder(path.parent, option)


def check_layers(layers: Sequence[int], n_layers: int) -> None:
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(
            f"layers {bad} are out of range for a model with {n_layers} layers; "
            f"choose layers in 0..{n_layers - 1}"
        )


def check_timeout(timeout: float) -> None:
    """A time limit in seconds (``--timeout``) must be positive."""
    if not timeout > 0:
        raise ValueError(f"--timeout must be a positive number of seconds, got {timeout}")
