"""A deliberately broken editor (``--degrade zero|flip``), to check that the gates fail it."""

from __future__ import annotations

import torch
from torch import nn

from rome_fast.edit.ownership import copy_weight, stored_weight
from rome_fast.edit.prepared import PreparedEdit
from rome_fast.edit.request import EditRequest, EditResult
from rome_fast.eval.config import DEGRADE_MODES
from rome_fast.eval.protocols import OurEditor


class DegradedEditor:
    """A deliberately broken editor for validating gates: ``zero`` leaves the model unchanged
    (each edit is reverted at once), ``flip`` applies −ΔW instead of ΔW."""

    def __init__(self, editor: OurEditor, mode: str, model: nn.Module) -> None:
        if mode not in DEGRADE_MODES[1:]:
            raise ValueError(f"degrade mode must be 'zero' or 'flip', got {mode!r}")
        self.editor, self.mode, self.model = editor, mode, model
        self.hparams = getattr(editor, "hparams", None)
        # The weight as the editor last wrote it, before the latest flip: put back before
        # the editor undoes anything, which it would otherwise refuse as a foreign write.
        self._unflipped: dict[str, torch.Tensor] = {}

    def edit(self, request: EditRequest, variant: str = "r-rome") -> EditResult:
        return self._degrade(self.editor.edit(request, variant=variant))

    def prepare(self, request: EditRequest) -> PreparedEdit:
        return self.editor.prepare(request)

    def apply(self, prepared: PreparedEdit, variant: str = "r-rome") -> EditResult:
        return self._degrade(self.editor.apply(prepared, variant))

    def _degrade(self, result: EditResult) -> EditResult:
        if self.mode == "zero":
            self.editor.revert(result)
        else:
            from rome_fast.model.weights import apply_factors

            for site in result.update:
                module = self.model.get_submodule(site.module_name)
                self._unflipped[site.module_name] = stored_weight(module).detach().clone()
                apply_factors(module, site.factors, sign=-2.0)
        return result

    def _unflip(self) -> None:
        for name, weight in self._unflipped.items():
            copy_weight(self.model.get_submodule(name), weight)
        self._unflipped.clear()

    def revert(self, result: EditResult) -> None:
        self._unflip()
        self.editor.revert(result)

    def restore(self) -> None:
        self._unflip()
        self.editor.restore()
