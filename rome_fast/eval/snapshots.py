"""Snapshots of the editable weights taken before any edit: which weights a run watches,
exact-restore checks, cumulative ‖W − W0‖ and a last-resort reset."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from rome_fast.edit.ownership import stored_weight
from rome_fast.eval.protocols import AnyEditor
from rome_fast.infra.errors import RunStoppedError
from rome_fast.model.loader import LoadedModel


def module_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The weight parameter of the submodule ``name``, as stored."""
    return stored_weight(model.get_submodule(name))


class WeightSnapshots:
    """Copies of the editable weights taken before any edit: exact-restore checks,
    cumulative ‖W − W0‖, and a last-resort reset between variants."""

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.model = model
        self.original = {n: self._weight(n).detach().clone() for n in names}
        self.numel = max(w.numel() for w in self.original.values())

    def _weight(self, name: str) -> torch.Tensor:
        return module_weight(self.model, name)

    def require(self, name: str) -> None:
        if name not in self.original:
            raise RunStoppedError(
                f"the editor changed {name!r}, which the run did not snapshot; "
                f"snapshotted: {sorted(self.original)}"
            )

    def changed(self) -> list[str]:
        return [n for n, w0 in self.original.items() if not torch.equal(self._weight(n), w0)]

    def check_restored(self, context: str) -> None:
        changed = self.changed()
        if changed:
            raise RunStoppedError(f"{context}: weights not restored bit-exactly: {changed}")

    def distance(self) -> float:
        """‖W − W0‖_F over every snapshotted weight (orientation does not matter)."""
        total = sum(
            float((self._weight(n).double() - w0.double()).pow(2).sum())
            for n, w0 in self.original.items()
        )
        return math.sqrt(total)

    def current(self) -> dict[str, torch.Tensor]:
        return {n: self._weight(n).detach().clone() for n in self.changed()}

    def load(self, weights: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in weights.items():
                self.require(name)
                self._weight(name).copy_(value)

    def reset(self) -> None:
        self.load(self.original)


def editable_module_names(
    loaded: LoadedModel, editor: AnyEditor, layers: Sequence[int] | None = None
) -> list[str]:
    """The modules of ``layers`` (a batched method's) if given, else the editor's layer if it
    states one (``editor.hparams.layer``), else every layer's."""
    if layers is None:
        layer = getattr(getattr(editor, "hparams", None), "layer", None)
        layers = [layer] if isinstance(layer, int) else range(loaded.adapter.n_layers(loaded.model))
    return [loaded.adapter.edited_module_name(i) for i in layers]
