"""A user's variant from the command line: ``--variant SPEC``, ``--variants a,SPEC``.

``SPEC`` is ``module:function`` (an importable module, e.g. ``mypkg.variants:damped``) or
``path/to/file.py:function``, optionally followed by ``@k_star`` or ``@k_prompt``: the key the
function promises to map to ``v*`` exactly (``inserts_at``, which ``check_variant`` and the
editor's residual checks use). Without the suffix, the function's own ``inserts_at``
attribute is read; with neither, the spec is refused (there is no safe guess).

The function, ``fn(UpdateInputs) -> RankOne``, is called once on a small well-posed input
before it is registered, so a wrong signature or return type fails here with its name and
not in the middle of a run. It is registered as ``module:function`` (for a file, its stem:
``path/to/mine.py:f`` becomes ``mine:f``), a name that is also safe in run-folder file names;
the same name from another source is refused.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import cast, get_args

import torch

from rome_fast.cli.validate import SPEC_HELP
from rome_fast.methods.rome.update import CovarianceFactor, RankOne, UpdateInputs, Variant
from rome_fast.methods.rome.variants import (
    KEY_NAMES,
    KeyName,
    RegisteredVariant,
    available_variants,
    get_variant,
    register_variant,
)


def is_spec(name: str) -> bool:
    """Whether a variant name is a user spec (``module:function``) rather than a registered
    name."""
    return ":" in name


def _import(module: str, spec: str) -> ModuleType:
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise ValueError(f"variant {spec!r}: file {module!r} does not exist")
        found = importlib.util.spec_from_file_location(f"rome_user_variant_{path.stem}", path)
        if found is None or found.loader is None:
            raise ValueError(f"variant {spec!r}: cannot load {module!r} as a Python file")
        loaded = importlib.util.module_from_spec(found)
        sys.modules[found.name] = loaded
        found.loader.exec_module(loaded)
        return loaded
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise ValueError(
            f"variant {spec!r}: cannot import module {module!r} ({err}); put it on "
            "PYTHONPATH or give a file: path/to/file.py:function"
        ) from None


def _probe_inputs() -> UpdateInputs:
    """A small well-posed input (d_out 3, d_in 4, float64): C = I + a rank-one bump."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4, generator=generator, dtype=torch.float64)
    C = torch.eye(4, dtype=torch.float64) + torch.outer(a, a)
    k_star = torch.randn(4, generator=generator, dtype=torch.float64)
    return UpdateInputs(
        W0=torch.randn(3, 4, generator=generator, dtype=torch.float64),
        cov=CovarianceFactor.from_matrix(C, dtype=torch.float64),
        k_star=k_star,
        k_prompt=k_star + 0.1 * torch.randn(4, generator=generator, dtype=torch.float64),
        v_star=torch.randn(3, generator=generator, dtype=torch.float64),
    )


def _probe(fn: Variant, spec: str) -> None:
    inp = _probe_inputs()
    try:
        out = fn(inp)
    except Exception as err:
        raise ValueError(
            f"variant {spec!r} failed on a small well-posed input (d_out 3, d_in 4): "
            f"{type(err).__name__}: {err}; it must be fn(UpdateInputs) -> RankOne"
        ) from err
    if not isinstance(out, RankOne):
        raise ValueError(
            f"variant {spec!r} returned {type(out).__name__}, not a RankOne "
            "(rome_fast.methods.rome.update.RankOne(left, right, denominator))"
        )
    shapes = (tuple(out.left.shape), tuple(out.right.shape))
    if shapes != ((3,), (4,)):
        raise ValueError(
            f"variant {spec!r} returned left {shapes[0]} and right {shapes[1]}; for W0 of "
            "shape (d_out, d_in) they must be (d_out,) and (d_in,)"
        )


# Registered user variants: name -> where it was loaded from (a module name or a file).
_SOURCES: dict[str, str] = {}


def _source(module: str) -> str:
    return str(Path(module).resolve()) if module.endswith(".py") else module


def load_variant(spec: str) -> RegisteredVariant:
    """Import, check and register the function ``spec`` names (see the module docstring);
    a spec already registered from the same source is returned as it is."""
    target, _, key = spec.partition("@")
    module, _, attr = target.rpartition(":")
    if not module or not attr:
        raise ValueError(f"variant {spec!r}: expected {SPEC_HELP}")
    name = f"{Path(module).stem if module.endswith('.py') else module}:{attr}"
    if name in available_variants():
        if _SOURCES.get(name) != _source(module):
            raise ValueError(
                f"variant {spec!r}: the name {name!r} is already registered from "
                f"{_SOURCES.get(name, 'Python code')}; rename the file or the function"
            )
        existing = get_variant(name)
        if key and key != existing.inserts_at:
            raise ValueError(
                f"variant {spec!r}: {name!r} is already registered with @{existing.inserts_at}"
            )
        return existing
    if key and key not in KEY_NAMES:
        raise ValueError(f"variant {spec!r}: the suffix must be @k_star or @k_prompt, got @{key}")
    fn = getattr(_import(module, spec), attr, None)
    if fn is None:
        raise ValueError(f"variant {spec!r}: module {module!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"variant {spec!r}: {attr!r} is a {type(fn).__name__}, not a function")
    inserts_at = key or getattr(fn, "inserts_at", None)
    if inserts_at not in get_args(KeyName):
        raise ValueError(
            f"variant {spec!r}: say which key it maps to v* exactly: append @k_star or "
            f"@k_prompt, or set {attr}.inserts_at = 'k_star' in its module"
        )
    _probe(fn, spec)
    registered = register_variant(name, fn, inserts_at=cast(KeyName, inserts_at))
    _SOURCES[name] = _source(module)
    return registered


def registered_variant_name(name: str) -> str:
    """The registered name for ``name``: a user spec is loaded and registered first."""
    return load_variant(name).name if is_spec(name) else get_variant(name).name
