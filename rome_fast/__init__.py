"""rome_fast: the optimized torch implementation of ROME, r-ROME and p-ROME.

Names are imported lazily so that ``import rome_fast`` stays cheap (transformers is
only loaded when a model is).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "rank_one_update": "rome_fast.update",
    "rank_one_factors": "rome_fast.update",
    "insertion_update": "rome_fast.update",
    "CovarianceFactor": "rome_fast.update",
    "RankOne": "rome_fast.update",
    "UpdateInputs": "rome_fast.update",
    "register_variant": "rome_fast.variants",
    "get_variant": "rome_fast.variants",
    "available_variants": "rome_fast.variants",
    "check_variant": "rome_fast.testing",
    "VariantReport": "rome_fast.testing",
    "weight_matrix": "rome_fast.weights",
    "apply_rank_one": "rome_fast.weights",
    "load_model": "rome_fast.models",
    "LoadedModel": "rome_fast.models",
    "Editor": "rome_fast.editor",
    "EditRequest": "rome_fast.request",
    "EditResult": "rome_fast.request",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name == "testing":
        return importlib.import_module("rome_fast.testing")
    raise AttributeError(f"module 'rome_fast' has no attribute {name!r}")
