"""The batched editors' hyperparameter files users hold, read whole: the original MEMIT code's
JSON (``hparams/MEMIT/*.json``, which names no method: the caller says which) and EasyEdit's
MEMIT, EMMET and AlphaEdit yamls (``alg_name`` names the method).

Every field is handled as for ROME's files (``rome_fast.hparams.files``): the target
optimization's and the statistics' fields map to ``HParams``; ``layers`` and each method's own
weights to the method's dataclass (``METHOD_FIELDS``); module names are checked against the
model; fields another option owns are noted; fields the public code never reads are noted as
such (``NOT_READ``); unknown fields are refused.

Two values the files do not state come from the public code itself: the context templates,
which its ``get_context_templates`` fixes at 5 generated prefixes of 10 tokens plus the bare
prompt (``TEMPLATE_SCHEDULE``), and the layer of the target optimization, the last edited one
(``compute_z`` runs at ``layers[-1]``), which becomes ``HParams.layer``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rome_fast.hparams.batched import Method, MethodHParams, check_method
from rome_fast.hparams.defaults import HParams
from rome_fast.hparams.files import (
    MAPPED,
    MODULE_FIELDS,
    OWNED_ELSEWHERE,
    HParamsFile,
    checked_fields,
    mapped_values,
    parse_number,
    read_mapping,
    refuse_unknown,
)
from rome_fast.methods.alphaedit.update import AlphaEditHParams
from rome_fast.methods.emmet.update import EmmetHParams
from rome_fast.methods.memit.update import MemitHParams

# alg_name -> our method name; the dataclass of each method's own hyperparameters.
METHODS: dict[str, Method] = {"MEMIT": "memit", "EMMET": "emmet", "AlphaEdit": "alphaedit"}
DATACLASSES: dict[Method, Callable[..., MethodHParams]] = {
    "memit": MemitHParams,
    "emmet": EmmetHParams,
    "alphaedit": AlphaEditHParams,
}
# The fields each method's dataclass takes besides ``layers`` (all numbers).
METHOD_FIELDS: dict[Method, tuple[str, ...]] = {
    "memit": ("mom2_update_weight",),
    "emmet": ("mom2_update_weight", "emmet_lambda", "update_norm_lambda"),
    "alphaedit": ("nullspace_threshold", "L2"),
}
# In the files, never read by the public code (grep ``hparams.<field>`` in its folder).
NOT_READ = {
    "mom2_adjustment": "the batched codes always use C",
    "layer_selection": "no public code reads it",
}
# AlphaEdit's files carry MEMIT's weight; its solve has no λC term.
ALPHAEDIT_NOT_READ = {"mom2_update_weight": "AlphaEdit's solve has no λC term"}
# P is computed per editor from the unedited model's C, never through a file.
BATCH_OWNED_ELSEWHERE = {
    **OWNED_ELSEWHERE,
    "P_loc": "nobody: the null space is computed from C per editor, never read from a file",
    "max_length": "nobody: the batched codes never read it",
}
# The shared fields: every ROME mapping but the one layer and mom2_adjustment.
SHARED = {name: rule for name, rule in MAPPED.items() if name not in ("layers", *NOT_READ)}
TEMPLATE_SCHEDULE = ((10, 5),)  # get_context_templates: [(10, 5)], "Be careful about changing this"
KNOWN = (
    "alg_name",
    "fact_token",
    "v_loss_layer",
    "layers",
    *SHARED,
    *MODULE_FIELDS,
    *BATCH_OWNED_ELSEWHERE,
    *NOT_READ,
    *{name for fields in METHOD_FIELDS.values() for name in fields},
)


@dataclass(frozen=True)
class BatchHParamsFile:
    """What a batched editor's file says: the method, its own hyperparameters, and the shared
    values and checks as a ROME file's (``shared.changes`` includes the layer of the target
    optimization and the public code's template schedule)."""

    method: Method
    method_hparams: MethodHParams
    shared: HParamsFile

    def apply(self, base: HParams) -> HParams:
        """``base`` with the file's shared values."""
        return self.shared.apply(base)


def _method(path: str | Path, data: Mapping[str, Any], method: str | None) -> Method:
    alg = data.get("alg_name")
    if alg is not None and alg not in METHODS:
        raise ValueError(
            f"hparams file {str(path)!r}: alg_name is {alg!r}; batched files are "
            f"{sorted(METHODS)} (ROME files are read without --method)"
        )
    named = METHODS[alg] if alg is not None else None
    if named is not None and method is not None and named != method:
        raise ValueError(
            f"hparams file {str(path)!r} is EasyEdit's {alg} file but the method asked is "
            f"{method!r}: pass --method {named} or another file"
        )
    if named is None and method is not None:
        return check_method(method)
    if named is None:
        raise ValueError(
            f"hparams file {str(path)!r} names no method (the original MEMIT code's JSON has "
            "no alg_name): pass --method memit, emmet or alphaedit"
        )
    return named


def _layers(name: str, value: Any) -> tuple[int, ...]:
    values = value if isinstance(value, list) else [value]
    return tuple(parse_number(int)(name, layer) for layer in values)


def _method_hparams(path: str | Path, data: Mapping[str, Any], method: Method) -> MethodHParams:
    if "layers" not in data:
        raise ValueError(f"hparams file {str(path)!r}: no 'layers' field; name the edited layers")
    values: dict[str, Any] = {"layers": _layers("layers", data["layers"])}
    for name in METHOD_FIELDS[method]:
        if name in data:
            values[name] = parse_number(float)(name, data[name])
    try:
        return DATACLASSES[method](**values)
    except ValueError as err:
        raise ValueError(f"hparams file {str(path)!r}: {err}") from None


def _not_read(method: Method) -> dict[str, str]:
    return {**NOT_READ, **(ALPHAEDIT_NOT_READ if method == "alphaedit" else {})}


def read_batch_hparams_file(path: str | Path, method: str | None = None) -> BatchHParamsFile:
    """The file's method (``alg_name``, else ``method``), its values and notes."""
    data = read_mapping(path)
    chosen = _method(path, data, method)
    refuse_unknown(path, data, KNOWN)
    ignored = _not_read(chosen)
    foreign = sorted(
        {name for fields in METHOD_FIELDS.values() for name in fields if name in data}
        - {*METHOD_FIELDS[chosen], *ignored}
    )
    if foreign:
        raise ValueError(
            f"hparams file {str(path)!r}: fields {foreign} belong to another method than "
            f"{chosen}: remove them or pass that method"
        )
    method_hparams = _method_hparams(path, data, chosen)
    read = {name: value for name, value in data.items() if name not in ignored}
    changes = {
        "context_template_schedule": TEMPLATE_SCHEDULE,
        **mapped_values(path, read, SHARED),
        "layer": method_hparams.layers[-1],
    }
    modules, notes = checked_fields(path, data, BATCH_OWNED_ELSEWHERE)
    present = [f"{name} ({why})" for name, why in ignored.items() if name in data]
    if present:
        notes = (*notes, f"{path}: never read by the public code: {', '.join(present)}")
    return BatchHParamsFile(
        chosen, method_hparams, HParamsFile(str(path), changes, None, modules, notes)
    )
