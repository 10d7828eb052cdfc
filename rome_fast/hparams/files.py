"""Hyperparameter files users already hold, read into ``HParams`` with nothing dropped.

Two public formats, and our own field names:

- the JSON of the paper's code (``hparams/ROME/*.json`` of rebuilding-rome), with its
  variant flags ``original_implementation``, ``enable_random_prefix_keys`` and
  ``enable_prompt_keys`` (defaults there: ``True``, ``True``, ``False``);
- EasyEdit's yaml (``hparams/ROME/*.yaml``, ``hparams/R-ROME/*.yaml``), whose ``alg_name``
  picks the editor: ``ROME`` has no flags (the original update), ``R-ROME`` has the flags
  above with ``original_implementation`` defaulting to ``False``.

Every field is handled one of four ways, and the choice is listed in ``FIELDS``:

- mapped to an ``HParams`` field (``v_lr``, ``layers`` → ``layer``, ...);
- mapped to the variant the public code runs with the file (the flags, ``alg_name``);
- checked and otherwise without effect (module names, which must name the loaded model's
  modules; ``v_loss_layer``, whose output the public ``compute_v.py`` traces but never
  reads: its loss uses the final logits);
- refused with an error naming the field when we cannot honour its value
  (``fact_token`` other than ``subject_last``, more than one layer), or noted when it
  names a setting another option owns (``device``, ``model_name``, ``fp16``: printed as a
  note, never applied).

Unknown fields are refused. Where the public code parses a value differently from plain
YAML (``5e-1`` is a string to YAML 1.1; EasyEdit converts it), numbers are parsed here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from rome_fast.hparams.defaults import PUBLIC_NAMES, HParams
from rome_fast.model.adapters import Adapter

# The variant each combination of the paper's code's flags gives. compute_u.py uses the
# prefix-averaged key k* for the direction when ``original_implementation or
# enable_random_prefix_keys``, else the prompt key; compute_v.py inserts at k* when
# ``enable_random_prefix_keys``, else at the prompt key; rome_main.py asserts that exactly
# one of ``enable_prompt_keys`` and ``enable_random_prefix_keys`` is set.
PUBLIC_FLAG_DEFAULTS = {
    "original_implementation": True,
    "enable_random_prefix_keys": True,
    "enable_prompt_keys": False,
}
EASYEDIT_R_ROME_FLAG_DEFAULTS = {**PUBLIC_FLAG_DEFAULTS, "original_implementation": False}
FLAGS = tuple(PUBLIC_FLAG_DEFAULTS)


def variant_from_flags(flags: Mapping[str, bool]) -> str:
    """The variant the public code runs with these flags (see ``PUBLIC_FLAG_DEFAULTS``)."""
    if flags["enable_prompt_keys"] == flags["enable_random_prefix_keys"]:
        raise ValueError(
            "enable_prompt_keys and enable_random_prefix_keys are both "
            f"{flags['enable_prompt_keys']}; the public code asserts exactly one is true: "
            "set enable_random_prefix_keys for r-rome, enable_prompt_keys for rome or p-rome"
        )
    direction_k_star = flags["original_implementation"] or flags["enable_random_prefix_keys"]
    insert_k_star = flags["enable_random_prefix_keys"]
    if insert_k_star:
        return "r-rome"
    return "rome" if direction_k_star else "p-rome"


def parse_number(kind: type) -> Callable[[str, Any], Any]:
    def parse(name: str, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"field {name!r} must be a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"field {name!r} must be a number, got {value!r}") from None
        if kind is int:
            if number != int(number):
                raise ValueError(f"field {name!r} must be an integer, got {value!r}")
            return int(number)
        return number

    return parse


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"field {name!r} must be true or false, got {value!r}")
    return value


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"field {name!r} must be a string, got {value!r}")
    return value


def _layer(name: str, value: Any) -> int:
    layers = value if isinstance(value, list) else [value]
    if len(layers) != 1:
        raise ValueError(
            f"field {name!r} lists {len(layers)} layers ({value!r}); this editor edits one "
            "layer per edit: keep one layer in the file or pass --layer"
        )
    parsed: int = parse_number(int)(name, layers[0])
    return parsed


def _schedule(name: str, value: Any) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list) or not all(
        isinstance(pair, list) and len(pair) == 2 for pair in value
    ):
        raise ValueError(f"field {name!r} must be a list of [length, count] pairs, got {value!r}")
    to_int = parse_number(int)
    return tuple((to_int(name, length), to_int(name, count)) for length, count in value)


def _fact_token(name: str, value: Any) -> None:
    if value != "subject_last":
        raise ValueError(
            f"field {name!r} is {value!r}; only 'subject_last' (the key at the subject's "
            "last token, as in every shipped file) is implemented: change the field"
        )


def _mom2_dataset(name: str, value: Any) -> str:
    if value != "wikipedia":
        raise ValueError(
            f"field {name!r} is {value!r}; only 'wikipedia' is known here: remove the "
            "field and give the text with --stats-corpus (or a statistics file with --stats-npz)"
        )
    return "wikipedia"


# Field name -> (HParams field it sets, parser). The parser returns the value to set.
MAPPED: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "layers": ("layer", _layer),
    "v_num_grad_steps": ("v_num_grad_steps", parse_number(int)),
    "v_lr": ("v_lr", parse_number(float)),
    "v_weight_decay": ("v_weight_decay", parse_number(float)),
    "clamp_norm_factor": ("clamp_norm_factor", parse_number(float)),
    "kl_factor": ("kl_factor", parse_number(float)),
    "mom2_adjustment": ("mom2_adjustment", _bool),
    "context_template_length_params": ("context_template_schedule", _schedule),
    "mom2_n_samples": ("mom2_n_samples", parse_number(int)),
    "mom2_dtype": ("mom2_dtype", _string),
    "mom2_dataset": ("stats_corpus", _mom2_dataset),
}
# Module-name templates: checked against the loaded model (``check_against_model``).
MODULE_FIELDS = (
    "rewrite_module_tmp",
    "layer_module_tmp",
    "mlp_module_tmp",
    "attn_module_tmp",
    "ln_f_module",
    "lm_head_module",
)
# Set by another option; a note says which, the value is not applied.
OWNED_ELSEWHERE = {
    "model_name": "--model",
    "device": "--device",
    "stats_dir": "--stats-npz / --stats-corpus",
    "fp16": "--dtype",
    "model_parallel": "--device: one device per run",
    "max_length": "nobody: EasyEdit's ROME and R-ROME code never reads it",
}
# Read for their effect on the variant or checked; documented in the module docstring.
OTHER_FIELDS = ("alg_name", "fact_token", "v_loss_layer", *FLAGS)
# Ours by name, except the matmul precision, a property of the machine (``--precision``).
OUR_FIELDS = ("layer", "mom2_adjustment", *(n for n in PUBLIC_NAMES if n != "v_precision"))
FIELDS = (*MAPPED, *MODULE_FIELDS, *OWNED_ELSEWHERE, *OTHER_FIELDS)


@dataclass(frozen=True)
class HParamsFile:
    """What a file says: hyperparameter values, the variant the file's code runs, notes."""

    path: str
    changes: dict[str, Any]  # HParams field -> value
    variant: str | None  # None: the file states no editor (our own field names only)
    modules: dict[str, str] = field(default_factory=dict)  # MODULE_FIELDS present
    notes: tuple[str, ...] = ()

    @property
    def layer(self) -> int | None:
        layer: int | None = self.changes.get("layer")
        return layer

    def apply(self, base: HParams) -> HParams:
        """``base`` with the file's values."""
        try:
            return base.replace(**self.changes)
        except (TypeError, ValueError) as err:
            raise ValueError(f"hparams file {self.path!r}: {err}") from None


def read_mapping(path: str | Path) -> dict[str, Any]:
    """The file's fields: JSON for ``.json``, YAML otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hparams file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"hparams file {str(path)!r} is not valid JSON: {err}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"hparams file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"hparams file {str(path)!r} must hold a mapping of field: value")
    return data


def _variant(data: Mapping[str, Any]) -> str | None:
    alg = data.get("alg_name")
    if alg not in (None, "ROME", "R-ROME"):
        raise ValueError(
            f"field 'alg_name' is {alg!r}; only ROME and R-ROME files can be read "
            "(EasyEdit's hparams/ROME and hparams/R-ROME)"
        )
    if alg == "ROME":
        present = [f for f in FLAGS if f in data]
        if present:
            raise ValueError(
                f"fields {present} are not read by EasyEdit's ROME editor (alg_name: ROME "
                "always runs the original update): remove them or use alg_name: R-ROME"
            )
        return "rome"
    if alg is None and all(f in OUR_FIELDS for f in data):
        return None  # our own format: it names no editor
    defaults = EASYEDIT_R_ROME_FLAG_DEFAULTS if alg == "R-ROME" else PUBLIC_FLAG_DEFAULTS
    flags = {f: _bool(f, data.get(f, default)) for f, default in defaults.items()}
    return variant_from_flags(flags)


def read_hparams_file(path: str | Path) -> HParamsFile:
    """The file's values, its variant and notes on what the file sets elsewhere."""
    data = read_mapping(path)
    refuse_unknown(path, data, FIELDS)
    changes = mapped_values(path, data, MAPPED)
    modules, notes = checked_fields(path, data, OWNED_ELSEWHERE)
    return HParamsFile(str(path), changes, _variant(data), modules, notes)


def refuse_unknown(path: str | Path, data: Mapping[str, Any], known: Sequence[str]) -> None:
    """Every field must be one of ``known`` (the public code's) or ours by name."""
    unknown = sorted(set(data) - set(known) - set(OUR_FIELDS))
    if unknown:
        raise ValueError(
            f"hparams file {str(path)!r}: unknown fields {unknown}; known: the public "
            f"code's {sorted(known)} and ours {sorted(OUR_FIELDS)}"
        )


def mapped_values(
    path: str | Path,
    data: Mapping[str, Any],
    mapped: Mapping[str, tuple[str, Callable[[str, Any], Any]]],
) -> dict[str, Any]:
    """``HParams`` field -> value for the fields of ``mapped`` and ours by name; two fields
    that set one value are refused."""
    changes: dict[str, Any] = {}
    set_by: dict[str, str] = {}
    for name, raw in data.items():
        if name in mapped:
            target, parse = mapped[name]
            value = parse(name, raw)
        elif name in OUR_FIELDS:
            target = name
            value = tuple(map(tuple, raw)) if isinstance(raw, list) else raw
        else:
            continue
        if target in set_by:
            raise ValueError(
                f"hparams file {str(path)!r}: fields {set_by[target]!r} and {name!r} both set "
                f"{target}; keep one"
            )
        changes[target], set_by[target] = value, name
    return changes


def checked_fields(
    path: str | Path, data: Mapping[str, Any], owned_elsewhere: Mapping[str, str]
) -> tuple[dict[str, str], tuple[str, ...]]:
    """The fields checked without effect (refused when we cannot honour them), the module
    names (``MODULE_FIELDS`` present) and a note naming the fields another option owns."""
    if "fact_token" in data:
        _fact_token("fact_token", data["fact_token"])
    if "v_loss_layer" in data:
        # compute_v.py traces this layer's output but never reads it: the loss uses the logits.
        parse_number(int)("v_loss_layer", data["v_loss_layer"])
    modules = {name: _string(name, data[name]) for name in MODULE_FIELDS if name in data}
    elsewhere = [f"{name} ({owner})" for name, owner in owned_elsewhere.items() if name in data]
    notes: tuple[str, ...] = (
        (f"{path}: not applied, other options set them: {', '.join(elsewhere)}",)
        if elsewhere
        else ()
    )
    return modules, notes


def check_against_model(hfile: HParamsFile, model: nn.Module, adapter: Adapter, layer: int) -> None:
    """The file's module names must be the loaded model's (else it is another model's file)."""
    edited = hfile.modules.get("rewrite_module_tmp")
    expected = adapter.edited_module_name(layer)
    if edited is not None and edited.format(layer) != expected:
        raise ValueError(
            f"hparams file {hfile.path!r}: rewrite_module_tmp {edited!r} names "
            f"{edited.format(layer)!r} but this model edits {expected!r}; the file is for "
            "another architecture: use a file for this model"
        )
    names = {name for name, _ in model.named_modules()}
    for name, template in hfile.modules.items():
        module = template.format(layer)
        if module not in names:
            raise ValueError(
                f"hparams file {hfile.path!r}: {name} {template!r} names {module!r}, which "
                "this model does not have; the file is for another architecture"
            )
