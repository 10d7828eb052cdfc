"""The editor protocol: what the conformance harness hands an editor under test.

An editor under test is any object with

* ``name: str`` and ``uncontrolled: list[str]`` (inputs the harness could not set for it,
  recorded in the report),
* ``edit(inputs: ConformInputs) -> Tensor | None``: edit ``inputs.loaded.model`` in place and
  return ``None``, or leave the model alone and return ΔW as a ``(d_out, d_in)`` tensor (the
  harness then adds it to the edited weight),
* optionally ``revert() -> None``: undo the latest edit (checked for bit-exactness).

A plain function ``fn(inputs) -> Tensor | None`` is wrapped by :class:`CallableEditor`
(``rome conform --editor my_pkg.my_module:my_function``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from torch import Tensor

from rome_fast.edit.request import EditRequest
from rome_fast.hparams.defaults import HParams
from rome_fast.model.loader import LoadedModel
from rome_fast.model.site import EditedSite


@dataclass(frozen=True)
class ConformInputs:
    """Everything the harness controls for one edit."""

    loaded: LoadedModel  # model, tokenizer, adapter
    request: EditRequest
    site: EditedSite  # the edited module, resolved once
    templates: list[str]  # context templates, "{}" first
    C: Tensor = field(repr=False)  # (d_in, d_in) float32 key second moment E[k kᵀ]
    hparams: HParams  # v* loop settings (steps, lr, weight decay, clamp, KL factor)
    seed: int

    @property
    def layer(self) -> int:
        return self.site.layer


@runtime_checkable
class EditorUnderTest(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def uncontrolled(self) -> list[str]: ...

    def edit(self, inputs: ConformInputs) -> Tensor | None: ...


UNCHECKED_INPUTS = "whether the callable uses the templates, C and seed it is given"
EditFn = Callable[[ConformInputs], "Tensor | None"]


@dataclass
class CallableEditor:
    """A user's ``fn(inputs) -> ΔW | None`` as an editor under test (no revert)."""

    fn: EditFn
    name: str
    uncontrolled: list[str] = field(default_factory=list)

    def edit(self, inputs: ConformInputs) -> Tensor | None:
        return self.fn(inputs)


@contextmanager
def importable_from(path: str | Path | None) -> Iterator[None]:
    """Put ``path`` (a user's checkout) first on ``sys.path`` for the duration."""
    if path is None:
        yield
        return
    folder = str(Path(path).resolve())
    if not Path(folder).is_dir():
        raise ValueError(f"--editor-path {path} is not a folder; pass the checkout to import from")
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path.remove(folder)


def load_callable(spec: str, path: str | Path | None = None) -> EditorUnderTest:
    """``module:attribute`` as an editor: an object with ``edit``, a class making one, or a
    function ``fn(inputs) -> ΔW | None``; imported with ``path`` first on ``sys.path``."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected module:callable, got {spec!r}")
    with importable_from(path):
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ValueError(
                f"cannot import {module_name!r} ({error}); pass the folder holding it "
                "with --editor-path"
            ) from error
    target = getattr(module, attribute, None)
    if target is None:
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r}")
    if isinstance(target, type):
        target = target()
    if isinstance(target, EditorUnderTest):
        return target
    if not callable(target):
        raise ValueError(f"{spec} is neither callable nor an object with edit(inputs)")
    return CallableEditor(target, spec, [UNCHECKED_INPUTS])
