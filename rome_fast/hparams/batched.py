"""Per-model hyperparameters of the batched methods (MEMIT, EMMET, AlphaEdit).

GPT2-XL and GPT-J get the public files' values (each method's ``PUBLIC``). Other models get
the method's defaults with the edited layers placed relative to ROME's layer (``HPARAMS``),
as the public files place them: EMMET edits ROME's layer itself (GPT2-XL 17, GPT-J 5, as
ROME), MEMIT and AlphaEdit a window of five layers ending at ROME's layer, as GPT2-XL's
13–17 ends at its ROME layer 17 (GPT-J's 3–8 straddles its layer 5; we follow GPT2-XL's
rule, which needs no layer after ROME's), cut at layer 0 on shallow models.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

from rome_fast.hparams.defaults import HPARAMS, hparams_for, short_model_name
from rome_fast.methods.alphaedit import update as alphaedit
from rome_fast.methods.emmet import update as emmet
from rome_fast.methods.memit import update as memit

Method = Literal["memit", "emmet", "alphaedit"]
METHODS: tuple[Method, ...] = get_args(Method)
MethodHParams = memit.MemitHParams | emmet.EmmetHParams | alphaedit.AlphaEditHParams

_PUBLIC: dict[Method, dict[str, MethodHParams]] = {
    "memit": dict(memit.PUBLIC),
    "emmet": dict(emmet.PUBLIC),
    "alphaedit": dict(alphaedit.PUBLIC),
}
_DEFAULTS: dict[Method, MethodHParams] = {
    "memit": memit.MemitHParams(),
    "emmet": emmet.EmmetHParams(),
    "alphaedit": alphaedit.AlphaEditHParams(),
}
# Our short model names -> the public files' names (``rome_fast.hparams.defaults.HPARAMS``).
_PUBLIC_NAMES = {"gpt2-xl": "gpt2-xl", "gpt-j-6b": "gpt-j-6B"}
WINDOW = 5  # layers of the MEMIT / AlphaEdit window ending at ROME's layer (GPT2-XL's 13–17)


def check_method(method: str) -> Method:
    """``method`` as a ``Method``; ValueError naming the known ones."""
    for known in METHODS:
        if method == known:
            return known
    raise ValueError(f"unknown batched method {method!r}; choose one of {', '.join(METHODS)}")


def method_hparams_for(method: str, model: str, *, layer: int | None = None) -> MethodHParams:
    """The hyperparameters of ``method`` for model ``model`` (a ``load_model`` spec); ``layer``
    (ROME's edited layer, e.g. ``--layer``) places the layers by the rule above instead of
    the public files' choice."""
    known = check_method(method)
    public = _PUBLIC_NAMES.get(short_model_name(model))
    if layer is None and public is not None and public in _PUBLIC[known]:
        return _PUBLIC[known][public]
    # ValueError naming the fix for an unknown model without ``layer``
    rome_layer = hparams_for(model, layer=layer).layer
    if known == "emmet":
        layers: tuple[int, ...] = (rome_layer,)
    else:
        layers = tuple(range(max(0, rome_layer - WINDOW + 1), rome_layer + 1))
    return dataclasses.replace(_DEFAULTS[known], layers=layers)


def method_hparams_at(method: str, model: str, rome_layer: int) -> MethodHParams:
    """The hyperparameters of ``method`` for an editor whose ROME layer is ``rome_layer``:
    the model's own (``method_hparams_for``) when that is the model's ROME layer, else placed
    at ``rome_layer`` by the same rule (a user's ``--layer`` or ``HParams(layer=...)``, or a
    model without per-model values)."""
    known = HPARAMS.get(short_model_name(model))
    own = known is not None and known.layer == rome_layer
    return method_hparams_for(method, model, layer=None if own else rome_layer)
