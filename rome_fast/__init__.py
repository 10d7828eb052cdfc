"""rome_fast: the optimized torch implementation of ROME, r-ROME and p-ROME, and of the
batched MEMIT, EMMET and AlphaEdit.

Names are imported lazily so that ``import rome_fast`` stays cheap (transformers is
only loaded when a model is).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "rank_one_update": "rome_fast.methods.rome.update",
    "rank_one_factors": "rome_fast.methods.rome.update",
    "insertion_update": "rome_fast.methods.rome.update",
    "CovarianceFactor": "rome_fast.methods.rome.update",
    "RankOne": "rome_fast.methods.rome.update",
    "UpdateInputs": "rome_fast.methods.rome.update",
    "register_variant": "rome_fast.methods.rome.variants",
    "get_variant": "rome_fast.methods.rome.variants",
    "available_variants": "rome_fast.methods.rome.variants",
    "check_variant": "rome_fast.testing",
    "VariantReport": "rome_fast.testing",
    "weight_matrix": "rome_fast.model.weights",
    "apply_rank_one": "rome_fast.model.weights",
    "load_model": "rome_fast.model.loader",
    "LoadedModel": "rome_fast.model.loader",
    "Editor": "rome_fast.edit.editor",
    "EditRequest": "rome_fast.edit.request",
    "EditResult": "rome_fast.edit.request",
    # many facts at once: Editor.edit_batch(requests, method, keys=..., method_hparams=...)
    "BatchResult": "rome_fast.edit.batch_result",
    "FactRecord": "rome_fast.edit.batch_result",
    "SingularBatchError": "rome_fast.solve.batch",
    "MemitHParams": "rome_fast.methods.memit.update",
    "EmmetHParams": "rome_fast.methods.emmet.update",
    "AlphaEditHParams": "rome_fast.methods.alphaedit.update",
    "method_hparams_for": "rome_fast.hparams.batched",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605  the lazy exports' names, from their table


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name == "testing":
        return importlib.import_module("rome_fast.testing")
    raise AttributeError(f"module 'rome_fast' has no attribute {name!r}")
