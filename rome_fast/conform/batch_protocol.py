"""The batch editor protocol: what the conformance harness hands a batched editor under test.

A batched editor under test is any object with

* ``name: str`` and ``uncontrolled: list[str]`` (inputs the harness could not set for it),
* ``edit(inputs: BatchInputs) -> None``: write every request of ``inputs.requests`` into
  ``inputs.loaded.model`` in place, at the layers ``inputs.method.layers``,
* optionally ``revert() -> None``: undo the latest batch (checked for bit-exactness).

``BatchInputs`` has the fields of ``public_memit.MemitInputs`` under the same names, so a class
shaped like ``PublicMemit`` (``edit(XInputs)``, ``revert()``) plugs in through
:func:`shaped_like_public`. A plain function ``fn(inputs: BatchInputs) -> None`` is wrapped by
:class:`CallableBatchEditor` (``rome conform --editor my_pkg.my_module:my_function --batch N``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

from torch import Tensor

from rome_fast.conform.protocol import CallableEditor, load_callable
from rome_fast.edit.batch_keys import KeyChoice
from rome_fast.edit.batch_result import BatchResult
from rome_fast.edit.editor import Editor
from rome_fast.edit.request import EditRequest
from rome_fast.hparams.batched import Method, MethodHParams
from rome_fast.hparams.defaults import HParams
from rome_fast.methods.alphaedit.update import AlphaEditHParams
from rome_fast.methods.emmet.update import EmmetHParams
from rome_fast.model.loader import LoadedModel


@dataclass(frozen=True)
class BatchInputs:
    """Everything the harness controls for one batch (``MemitInputs``' fields and names)."""

    loaded: LoadedModel  # model, tokenizer, adapter
    requests: Sequence[EditRequest]
    templates: Sequence[str]  # context templates, "{}" first
    C: dict[int, Tensor] = field(repr=False)  # per edited layer: (d_in, d_in) float32 E[k kᵀ]
    hparams: HParams  # the target optimization's settings (v_star)
    method: MethodHParams  # the edited layers and the method's weights (λ, λₑ, α, threshold)
    seed: int

    @property
    def method_name(self) -> Method:
        return method_of(self.method)


def method_of(hp: MethodHParams) -> Method:
    """The batched method a hyperparameters dataclass belongs to."""
    if isinstance(hp, EmmetHParams):
        return "emmet"
    return "alphaedit" if isinstance(hp, AlphaEditHParams) else "memit"


@runtime_checkable
class BatchEditorUnderTest(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def uncontrolled(self) -> list[str]: ...

    def edit(self, inputs: BatchInputs) -> None: ...


BATCH_UNCHECKED = "whether the callable uses the templates, C per layer and seed it is given"


@dataclass
class CallableBatchEditor:
    """A user's ``fn(inputs: BatchInputs) -> None`` as a batched editor under test."""

    fn: Callable[[BatchInputs], object]
    name: str
    uncontrolled: list[str] = field(default_factory=list)

    def edit(self, inputs: BatchInputs) -> None:
        self.fn(inputs)


def load_batch_callable(spec: str, path: str | None = None) -> BatchEditorUnderTest:
    """``module:attribute`` as a batched editor: an object with ``edit(BatchInputs)``, a class
    making one, or a function ``fn(inputs: BatchInputs) -> None``."""
    found = load_callable(spec, path)
    if isinstance(found, CallableEditor):
        # the same function, called with BatchInputs instead (the module docstring)
        return CallableBatchEditor(
            cast(Callable[[BatchInputs], object], found.fn), spec, [BATCH_UNCHECKED]
        )
    return cast(BatchEditorUnderTest, found)


@dataclass
class ShapedLikePublic:
    """A class shaped like ``PublicMemit``: ``edit(inputs_type(**BatchInputs' fields))``."""

    target: Any  # the public code's driver: name, uncontrolled, edit(inputs), revert()
    inputs_type: type

    @property
    def name(self) -> str:
        return str(self.target.name)

    @property
    def uncontrolled(self) -> list[str]:
        return list(self.target.uncontrolled)

    def edit(self, inputs: BatchInputs) -> None:
        fields = {f.name: getattr(inputs, f.name) for f in dataclasses.fields(BatchInputs)}
        self.target.edit(self.inputs_type(**fields))

    def revert(self) -> None:
        self.target.revert()


def shaped_like_public(target: Any, inputs_type: type) -> BatchEditorUnderTest:
    """The one adapter for a public code's driver taking ``MemitInputs``-shaped inputs
    (``PublicMemit``, EasyEdit's drivers): its fields must be ``BatchInputs``' names, and any
    other field must have a default (left to the driver: EasyEdit AlphaEdit's handed-in state)."""
    expected = {f.name for f in dataclasses.fields(BatchInputs)}
    fields = dataclasses.fields(inputs_type)
    names = {f.name for f in fields}
    required_extra = {
        f.name
        for f in fields
        if f.name not in expected
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    }
    if not expected <= names or required_extra:
        raise TypeError(
            f"{inputs_type.__name__} has fields {sorted(names)}; a batched driver's inputs "
            f"must have {sorted(expected)}, any other field with a default"
        )
    return ShapedLikePublic(target, inputs_type)


def our_batch_editor_for(inputs: BatchInputs, earlier: Sequence[BatchResult] = ()) -> Editor:
    """Our editor with exactly the harness's inputs (templates, C per layer, settings, seed);
    ``earlier``: AlphaEdit batches written before, whose keys its Kₚ starts with."""
    C = inputs.C

    def per_layer(_: LoadedModel, layer: int) -> Tensor:
        return C[layer]

    return Editor(
        inputs.loaded,
        hparams=inputs.hparams.replace(layer=inputs.method.layers[-1]),
        seed=inputs.seed,
        stats=per_layer,
        templates=list(inputs.templates),
        earlier_batches=earlier,
    )


@dataclass
class OurBatchEditor:
    """``Editor.edit_batch`` at the key choice ``keys``: one editor for the batches applied in
    a row (AlphaEdit's Kₚ holds their keys, and a reverted batch's leave it), a fresh one
    when none is applied (so that nothing carries over between runs but the weights)."""

    keys: KeyChoice = "memit"
    uncontrolled: list[str] = field(default_factory=list)
    _applied: list[tuple[Editor, BatchResult]] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return f"rome-verify[{self.keys}]"

    def edit(self, inputs: BatchInputs) -> None:
        editor = self._applied[-1][0] if self._applied else our_batch_editor_for(inputs)
        result = editor.edit_batch(
            inputs.requests, inputs.method_name, keys=self.keys, method_hparams=inputs.method
        )
        self._applied.append((editor, result))

    def revert(self) -> None:
        """Undo the latest batch not yet reverted."""
        if not self._applied:
            raise ValueError("nothing to revert: no batch was written")
        editor, result = self._applied.pop()
        editor.revert(result)
