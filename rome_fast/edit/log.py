"""The edit log on disk: ``edits.json`` (every result's ``as_record()`` and the editor's model,
seed and hyperparameters) next to ``factors.safetensors`` (each edit's factors and keys, as
applied). ``Editor.save_log`` writes it; ``Editor.replay_log`` applies it after
``check_replayable``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from rome_fast.edit.guard import DisablingEditError, Guard
from rome_fast.edit.request import TENSOR_FIELDS, EditResult
from rome_fast.hparams.defaults import HParams
from rome_fast.model.weights import weight_matrix

LOG_FORMAT = "rome-verify-edit-log"
LOG_VERSION = 1
LOG_JSON = "edits.json"
LOG_TENSORS = "factors.safetensors"


def write_log(
    path: str | Path, results: Sequence[EditResult], *, model: str, seed: int, hparams: HParams
) -> Path:
    """Write ``edits.json`` and ``factors.safetensors`` into the folder ``path``."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    for i, result in enumerate(results):
        for key in TENSOR_FIELDS:
            tensors[f"edit{i}.{key}"] = getattr(result, key).contiguous()
    meta = {
        "format": LOG_FORMAT,
        "version": LOG_VERSION,
        "model": model,
        "seed": seed,
        "hparams": dataclasses.asdict(hparams),
        "edits": [result.as_record() for result in results],
    }
    save_file(tensors, str(folder / LOG_TENSORS))
    (folder / LOG_JSON).write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    return folder


def read_log(path: str | Path) -> list[EditResult]:
    """The edits of a log written by ``Editor.save_log``, oldest first."""
    return _load(path)[1]


def _load(path: str | Path) -> tuple[dict[str, Any], list[EditResult]]:
    folder = Path(path)
    meta = json.loads((folder / LOG_JSON).read_text())
    if meta.get("format") != LOG_FORMAT or meta.get("version") != LOG_VERSION:
        raise ValueError(f"{folder} does not hold a {LOG_FORMAT} version {LOG_VERSION} log")
    tensors = load_file(str(folder / LOG_TENSORS))
    results = [
        EditResult.from_record(entry, {key: tensors[f"edit{i}.{key}"] for key in TENSOR_FIELDS})
        for i, entry in enumerate(meta["edits"])
    ]
    return meta, results


def read_replayable(
    path: str | Path,
    model: nn.Module,
    model_name: str,
    *,
    check_model: bool = True,
    guard: Guard | None = None,
) -> list[EditResult]:
    """The log's edits, once each is known to fit ``model`` and to pass ``guard``: a log is
    refused whole, before any weight is touched."""
    meta, results = _load(path)
    if check_model and meta["model"] != model_name:
        raise ValueError(
            f"the log was written for model {meta['model']!r}, not "
            f"{model_name!r}; pass check_model=False to apply it anyway"
        )
    for result in results:
        W = weight_matrix(model.get_submodule(result.module_name))
        if tuple(W.shape) != (result.left.numel(), result.right.numel()):
            raise ValueError(
                f"edit of {result.module_name} has factors for a "
                f"{result.left.numel()}×{result.right.numel()} weight, the "
                f"model's is {tuple(W.shape)}"
            )
        reasons = guard.reasons(result.denominator, result.delta_norm) if guard else []
        if reasons:
            raise DisablingEditError(
                [f"{result.module_name}: {r}" for r in reasons],
                result.denominator,
                result.delta_norm,
            )
    return results
