"""The variant registry. Built-ins are registered exactly as a user's variant would be.

A variant is ``fn(UpdateInputs) -> RankOne``. ``inserts_at`` says which key it promises to
map to ``v*`` exactly (``"k_star"`` or ``"k_prompt"``); ``rome_fast.testing.check_variant``
uses it to choose the properties to check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rome_fast.update import RankOne, UpdateInputs, Variant, insertion_update

KeyName = Literal["k_star", "k_prompt"]
KEY_NAMES: tuple[KeyName, ...] = ("k_star", "k_prompt")


@dataclass(frozen=True)
class RegisteredVariant:
    """A registered variant: callable like its function, with its metadata."""

    name: str
    fn: Variant
    inserts_at: KeyName

    def __call__(self, inp: UpdateInputs) -> RankOne:
        return self.fn(inp)


_REGISTRY: dict[str, RegisteredVariant] = {}


def register_variant(
    name: str, fn: Variant, *, inserts_at: KeyName, replace: bool = False
) -> RegisteredVariant:
    """Register ``fn`` under ``name``; ``replace=True`` to overwrite an existing name."""
    if inserts_at not in KEY_NAMES:
        raise ValueError(f"inserts_at must be one of {KEY_NAMES}, got {inserts_at!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(
            f"variant {name!r} is already registered; pass replace=True to overwrite it"
        )
    entry = RegisteredVariant(name=name, fn=fn, inserts_at=inserts_at)
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
            "(register your own with rome_fast.variants.register_variant)"
        ) from None


def available_variants() -> tuple[str, ...]:
    return tuple(_REGISTRY)


register_variant(
    "rome", lambda inp: insertion_update(inp, inp.k_prompt, inp.k_star), inserts_at="k_prompt"
)
register_variant(
    "r-rome", lambda inp: insertion_update(inp, inp.k_star, inp.k_star), inserts_at="k_star"
)
register_variant(
    "p-rome", lambda inp: insertion_update(inp, inp.k_prompt, inp.k_prompt), inserts_at="k_prompt"
)
