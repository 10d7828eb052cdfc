"""The variant registry: the one table of which key each variant inserts at and moves along.

A variant is ``fn(UpdateInputs) -> RankOne``, registered with two facts:

- ``inserts_at``: the key it promises to map to ``v*`` exactly (``"k_star"`` or ``"k_prompt"``);
- ``direction_at``: the key ``d`` whose ``u = C⁻¹ d`` is the only direction ΔW moves W along
  (default: ``inserts_at``, the minimum-norm insertion).

The built-ins are rows of ``BUILTIN_KEYS`` over ``insertion_update``, registered exactly as a
user's variant would be. Everything that needs a variant's keys reads them here: the editor,
the naive editor, ``rome_fast.testing.check_variant`` and the property tests; ``rome_ref``
keeps its own readable copy of the table, checked equal to this one by a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from rome_fast.solve.rank_one import RankOne, UpdateInputs, Variant, insertion_update

KeyName = Literal["k_star", "k_prompt"]
KEY_NAMES: tuple[KeyName, ...] = ("k_star", "k_prompt")

# name: (inserts_at, direction_at)
BUILTIN_KEYS: dict[str, tuple[KeyName, KeyName]] = {
    "rome": ("k_prompt", "k_star"),  # the original public code (eq. 5)
    "r-rome": ("k_star", "k_star"),  # eq. 2 as derived
    "p-rome": ("k_prompt", "k_prompt"),  # the prompt key everywhere
}


def key_of(inp: UpdateInputs, name: KeyName) -> Tensor:
    """The key called ``name`` in a variant's inputs."""
    return inp.k_star if name == "k_star" else inp.k_prompt


@dataclass(frozen=True)
class RegisteredVariant:
    """A registered variant: callable like its function, with its two keys."""

    name: str
    fn: Variant
    inserts_at: KeyName
    direction_at: KeyName

    def __call__(self, inp: UpdateInputs) -> RankOne:
        return self.fn(inp)


@dataclass(frozen=True)
class Insertion:
    """The built-ins' rule: insert at one key, move along C⁻¹ of the other."""

    inserts_at: KeyName
    direction_at: KeyName

    def __call__(self, inp: UpdateInputs) -> RankOne:
        return insertion_update(inp, key_of(inp, self.inserts_at), key_of(inp, self.direction_at))


_REGISTRY: dict[str, RegisteredVariant] = {}


def _check_key(argument: str, value: object) -> KeyName:
    if value not in KEY_NAMES:
        raise ValueError(f"{argument} must be one of {KEY_NAMES}, got {value!r}")
    return value


def register_variant(
    name: str,
    fn: Variant,
    *,
    inserts_at: KeyName,
    direction_at: KeyName | None = None,
    replace: bool = False,
) -> RegisteredVariant:
    """Register ``fn`` under ``name``; ``replace=True`` to overwrite an existing name.

    ``direction_at`` defaults to ``inserts_at`` (ΔW moves along C⁻¹ of the key it inserts).
    """
    inserts = _check_key("inserts_at", inserts_at)
    direction = _check_key("direction_at", inserts_at if direction_at is None else direction_at)
    if name in _REGISTRY and not replace:
        raise ValueError(
            f"variant {name!r} is already registered; pass replace=True to overwrite it"
        )
    entry = RegisteredVariant(name=name, fn=fn, inserts_at=inserts, direction_at=direction)
    _REGISTRY[name] = entry
    return entry


def unregister_variant(name: str) -> None:
    """Remove a registered variant (built-ins included)."""
    get_variant(name)
    del _REGISTRY[name]


def get_variant(name: str) -> RegisteredVariant:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown variant {name!r}; available: {', '.join(available_variants())} "
            "(register your own with rome_fast.methods.rome.variants.register_variant)"
        ) from None


def variant_entry(variant: str | Variant) -> RegisteredVariant:
    """A name or a function, resolved once into its registered entry.

    An unregistered function is taken as declared ``inserts_at="k_star"`` (as
    ``check_variant`` assumes); register it to state its keys.
    """
    if isinstance(variant, RegisteredVariant):
        return variant
    if isinstance(variant, str):
        return get_variant(variant)
    name = str(getattr(variant, "__name__", repr(variant)))
    return RegisteredVariant(name=name, fn=variant, inserts_at="k_star", direction_at="k_star")


def available_variants() -> tuple[str, ...]:
    return tuple(_REGISTRY)


for _name, (_inserts, _direction) in BUILTIN_KEYS.items():
    register_variant(
        _name, Insertion(_inserts, _direction), inserts_at=_inserts, direction_at=_direction
    )
