"""The edit log on disk: ``edits.json`` (every result's ``as_record()`` and the editor's model,
seed and hyperparameters) next to ``factors.safetensors`` (each edit's factors per site and its
keys, as applied). ``Editor.save_log`` writes it; ``Editor.replay_log`` applies it after
``read_replayable``.

Version 2 stores edit ``i``'s site ``j`` as ``edit{i}.site{j}.left`` (d_out, r) and
``.right`` (d_in, r), the record's ``sites`` naming each site's layer and module. Version 1
logs (one rank-one pair per edit: ``edit{i}.left`` (d_out,), ``edit{i}.right`` (d_in,), the
record's ``layer`` and ``module_name``) are still read. Version 3 is version 2 with batched
edits among the entries (``BatchResult.as_record``, ``"kind": "batch"``), each site's key
matrix stored as ``edit{i}.site{j}.keys`` (d_in, n) and no per-edit key or value tensors; a
log without a batch is still written as version 2."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from rome_fast.edit.batch_result import Applied, BatchResult, is_batch_record
from rome_fast.edit.guard import Guard
from rome_fast.edit.request import TENSOR_FIELDS, EditResult
from rome_fast.hparams.defaults import HParams
from rome_fast.model.weights import weight_matrix
from rome_fast.solve.low_rank import Factors, SiteUpdate, Update

LOG_FORMAT = "rome-verify-edit-log"
LOG_VERSION = 2  # a log with a batched edit is written as BATCH_LOG_VERSION
BATCH_LOG_VERSION = 3
READ_VERSIONS = (1, 2, 3)  # 1: one rank-one pair per edit, before per-site updates
LOG_JSON = "edits.json"
LOG_TENSORS = "factors.safetensors"


def write_log(
    path: str | Path, results: Sequence[Applied], *, model: str, seed: int, hparams: HParams
) -> Path:
    """Write ``edits.json`` and ``factors.safetensors`` into the folder ``path``."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    for i, result in enumerate(results):
        tensors.update(_edit_tensors(result, f"edit{i}"))
    batched = any(isinstance(result, BatchResult) for result in results)
    meta = {
        "format": LOG_FORMAT,
        "version": BATCH_LOG_VERSION if batched else LOG_VERSION,
        "model": model,
        "seed": seed,
        "hparams": hparams.as_record(),
        "edits": [result.as_record() for result in results],
    }
    save_file(tensors, str(folder / LOG_TENSORS))
    (folder / LOG_JSON).write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    return folder


def _edit_tensors(result: Applied, prefix: str) -> dict[str, Tensor]:
    """One edit's tensors: its factors per site and its keys (and a single edit's v*)."""
    tensors: dict[str, Tensor] = {}
    if isinstance(result, BatchResult):
        for j, keys in enumerate(result.keys):
            tensors[f"{prefix}.site{j}.keys"] = keys.contiguous()
    else:
        for key in TENSOR_FIELDS:
            tensors[f"{prefix}.{key}"] = getattr(result, key).contiguous()
    for j, site in enumerate(result.update):
        tensors[f"{prefix}.site{j}.left"] = site.factors.left.contiguous()
        tensors[f"{prefix}.site{j}.right"] = site.factors.right.contiguous()
    return tensors


def read_log(path: str | Path) -> list[Applied]:
    """The edits of a log written by ``Editor.save_log``, oldest first."""
    return _load(path)[1]


def _load(path: str | Path) -> tuple[dict[str, Any], list[Applied]]:
    folder = Path(path)
    meta = json.loads((folder / LOG_JSON).read_text())
    version = meta.get("version")
    if meta.get("format") != LOG_FORMAT or version not in READ_VERSIONS:
        raise ValueError(
            f"{folder} does not hold a {LOG_FORMAT} log of a version this code reads "
            f"({', '.join(map(str, READ_VERSIONS))}); write it again with Editor.save_log"
        )
    tensors = load_file(str(folder / LOG_TENSORS))
    read_update = _version1_update if version == 1 else _update
    results = [
        _entry(entry, read_update(entry, tensors, f"edit{i}"), tensors, f"edit{i}")
        for i, entry in enumerate(meta["edits"])
    ]
    return meta, results


def _entry(
    record: dict[str, Any], update: Update, tensors: dict[str, Tensor], prefix: str
) -> Applied:
    if is_batch_record(record):
        keys = tuple(tensors[f"{prefix}.site{j}.keys"] for j in range(len(update.sites)))
        return BatchResult.from_record(record, update, keys)
    return EditResult.from_record(
        record, update, {key: tensors[f"{prefix}.{key}"] for key in TENSOR_FIELDS}
    )


def _update(record: dict[str, Any], tensors: dict[str, Tensor], prefix: str) -> Update:
    return Update(
        tuple(
            SiteUpdate(
                site["layer"],
                site["module_name"],
                Factors(tensors[f"{prefix}.site{j}.left"], tensors[f"{prefix}.site{j}.right"]),
            )
            for j, site in enumerate(record["sites"])
        )
    )


def _version1_update(record: dict[str, Any], tensors: dict[str, Tensor], prefix: str) -> Update:
    """One site of rank one: (d_out,) and (d_in,) factors as columns."""
    left, right = tensors[f"{prefix}.left"], tensors[f"{prefix}.right"]
    factors = Factors(left[:, None], right[:, None])
    return Update((SiteUpdate(record["layer"], record["module_name"], factors),))


def read_replayable(
    path: str | Path,
    model: nn.Module,
    model_name: str,
    *,
    check_model: bool = True,
    guard: Guard | None = None,
) -> list[Applied]:
    """The log's edits, once each is known to fit ``model`` and to pass ``guard``: a log is
    refused whole, before any weight is touched."""
    meta, results = _load(path)
    if check_model and meta["model"] != model_name:
        raise ValueError(
            f"the log was written for model {meta['model']!r}, not "
            f"{model_name!r}; pass check_model=False to apply it anyway"
        )
    for result in results:
        for site in result.update:
            W = weight_matrix(model.get_submodule(site.module_name))
            shape = (site.factors.left.shape[0], site.factors.right.shape[0])
            if tuple(W.shape) != shape:
                raise ValueError(
                    f"edit of {site.module_name} has factors for a {shape[0]}×{shape[1]} "
                    f"weight, the model's is {tuple(W.shape)}"
                )
        if guard is not None:
            denominator = result.denominator if isinstance(result, EditResult) else None
            guard.check(result.update, denominator)
    return results
