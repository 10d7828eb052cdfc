"""An editor under test behind the interface ``rome eval`` drives
(``eval.protocols.EditorLike``), so CounterFact metrics, sequential collapse detection and
gates run on it as on ours.

Each edit runs in a thread with a time limit (``invoke.TimeLimit``, ``rome eval --editor
--timeout``). An edit that fails, raises or does not return in time leaves the edited weight
as it was (ValueError: its case fails); after one that hung, whose thread cannot be killed,
the editor gets no later edit (each refused the same way), as a hung batch ends the batches
of ``batch_external``. Once an edit hung, the weight's digest is noted after each edit and
put-back and checked before the next edit, a revert or a restore: a change found there (the
hung thread still writing) stops the run (``RunStoppedError``). A revert or restore ends that
watch (the run may write the weight itself then, loading a checkpoint); single mode's own
check that each case starts from the unedited weights covers the time after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from rome_fast.conform.invoke import EditorFailed, TimeLimit, WatchedWeights, edit_in_place
from rome_fast.conform.protocol import ConformInputs, EditorUnderTest
from rome_fast.conform.timeouts import DEFAULT_TIMEOUT
from rome_fast.edit.request import EditRequest
from rome_fast.hparams.defaults import HParams
from rome_fast.model.loader import LoadedModel
from rome_fast.model.site import EditedSite


class Named(Protocol):
    @property
    def name(self) -> str: ...


def run_label(editor: Named) -> str:
    """The editor's name as a run's variant label (it names files): no ':' or brackets."""
    return editor.name.replace(":", ".").replace("[", "-").replace("]", "")


@dataclass(frozen=True)
class ExternalResult:
    """What ``rome eval`` records of one external edit (measured from the weights)."""

    variant: str
    layer: int
    module_name: str
    delta_norm: float  # ‖ΔW‖_F / numel, as for our edits
    before: Tensor = field(repr=False)  # the edited weight before this edit

    @property
    def module_names(self) -> tuple[str, ...]:
        return (self.module_name,)

    def as_record(self) -> dict[str, Any]:
        """The fields ``EditResult.as_record`` shares with it, under the same names: an
        external editor reports nothing else."""
        return {
            "variant": self.variant,
            "layer": self.layer,
            "module_name": self.module_name,
            "delta_norm": self.delta_norm,
        }


@dataclass
class ExternalEditor:
    """Edits through ``editor`` with the harness's templates, C, hyperparameters and seed,
    ``timeout`` seconds each (None: no limit)."""

    editor: EditorUnderTest
    loaded: LoadedModel
    hparams: HParams
    C: Tensor
    templates: list[str]
    seed: int = 0
    timeout: float | None = DEFAULT_TIMEOUT
    _originals: dict[str, Tensor] = field(default_factory=dict, repr=False)
    site: EditedSite = field(init=False, repr=False)
    _limit: TimeLimit = field(init=False, repr=False)
    _watched: WatchedWeights = field(init=False, repr=False)  # once an edit hung

    def __post_init__(self) -> None:
        self.site = self.loaded.adapter.edited_site(self.loaded.model, self.hparams.layer)
        self._limit = TimeLimit(self.timeout, "edit")
        self._watched = WatchedWeights(self._limit)

    def _note(self) -> None:
        """The weight as the harness left it, once a hung thread may write into it."""
        if self._limit.hung is not None:
            self._watched.note({self.site.module_name: self.site.module})

    @property
    def label(self) -> str:
        return run_label(self.editor)

    def edit(self, request: EditRequest, variant: str = "") -> ExternalResult:
        """Edit in place; a failing editor leaves the weight as it was and raises ValueError.
        ``variant`` may only name this editor (its ``label``); empty means the same."""
        if variant not in ("", self.label):
            raise ValueError(f"this run edits with {self.label}, not variant {variant!r}")
        self._watched.require("write the next edit")
        site = self.site
        name, W = site.module_name, site.weight
        before = W.detach().clone()
        self._originals.setdefault(name, before)
        inputs = ConformInputs(
            self.loaded, request, site, self.templates, self.C, self.hparams, self.seed
        )
        try:
            edit_in_place(self.editor, inputs, W, self._limit)
            if not bool(torch.isfinite(W).all()):
                raise EditorFailed(f"{self.editor.name} wrote non-finite weights into {name}")
        except EditorFailed as failure:
            with torch.no_grad():
                W.copy_(before)
            self._note()
            raise ValueError(f"the editor under test failed (model unchanged): {failure}") from None
        self._note()
        delta = W.detach().double() - before.double()
        return ExternalResult(
            self.label, site.layer, name, float(torch.linalg.norm(delta)) / W.numel(), before
        )

    def prepare(self, request: EditRequest) -> EditRequest:
        return request  # the editor under test does everything in edit()

    def apply(self, prepared: EditRequest, variant: str = "") -> ExternalResult:
        return self.edit(prepared, variant)

    def revert(self, result: ExternalResult) -> None:
        self._watched.require("revert the edit")
        with torch.no_grad():
            self.site.weight.copy_(result.before)
        self._watched.clear()  # the run writes the weight itself between streams (a checkpoint)

    def restore(self) -> None:
        """Every touched weight back to what it was before the first edit."""
        self._watched.require("restore the weight")
        site = self.site
        original = self._originals.pop(site.module_name, None)
        if original is not None:
            with torch.no_grad():
                site.weight.copy_(original)
        self._watched.clear()
