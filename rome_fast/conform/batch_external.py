"""A batched editor under test behind what ``rome eval --editor SPEC --method M`` writes its
batches with (``eval.protocols.BatchWriter``): each batch handed to the editor through the batch
protocol (``batch_protocol.BatchInputs``) with the harness's inputs (``batch_run.BatchSettings``:
templates, C per layer, the target optimization's settings, the method's hyperparameters, seed),
as ``rome conform --batch`` hands them, in a thread with a time limit (``invoke.TimeLimit``).

Nothing is left half-applied. The edited layers' weights are copied before each batch and put
back, and the model's flags, hooks and buffers reset (``state``), when the editor raises, hangs,
replaces a weight, changes its shape, dtype or device, or writes a non-finite value: the batch
is then refused with ValueError (its facts fail). A write outside the method's layers cannot be
undone (those weights are not copied): it stops the run (``RunStoppedError``). A hung editor's
thread may still be running: its later batches are refused without calling it, and a weight
changed after the harness last wrote or put it back (each edited layer's digest noted then) is
found before the next batch and before a restore (``RunStoppedError``).

A restore (single mode, after each batch) also replaces the editor under test by a new one:
what it remembers of the undone batches (AlphaEdit's keys of earlier batches, Kₚ) does not
carry over into the next, as our ``Editor.restore`` empties its log. A refused AlphaEdit batch
cannot be taken out of that memory (the protocol has no revert), so the stream's later batches
are refused unrun until a restore; MEMIT and EMMET keep nothing between batches but the weights.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from rome_fast.conform.batch_protocol import BatchEditorUnderTest, BatchInputs, method_of
from rome_fast.conform.batch_run import BatchSettings
from rome_fast.conform.invoke import (
    EditorHung,
    TimeLimit,
    WatchedWeights,
    describe_raise,
    seconds,
)
from rome_fast.conform.state import reset, snapshot
from rome_fast.conform.timeouts import DEFAULT_TIMEOUT
from rome_fast.edit.ownership import stored_weight
from rome_fast.edit.request import EditRequest
from rome_fast.hparams.batched import MethodHParams
from rome_fast.infra.errors import RunStoppedError
from rome_fast.model.loader import LoadedModel


@dataclass(frozen=True)
class ExternalBatchResult:
    """What ``rome eval`` records of one batch of an editor under test: its weights' |Δ|."""

    method: str
    editor: str
    requests: tuple[EditRequest, ...]
    sites: tuple[dict[str, Any], ...]  # per edited layer: layer, module_name, delta_norm
    edit_seconds: float

    @property
    def module_names(self) -> tuple[str, ...]:
        return tuple(str(site["module_name"]) for site in self.sites)

    def as_record(self) -> dict[str, Any]:
        """The fields ``BatchResult.as_record`` shares with it, under the same names (each
        fact's record holds its request only: an editor under test reports nothing else)."""
        return {
            "kind": "batch",
            "method": self.method,
            "editor": self.editor,
            "edit_seconds": self.edit_seconds,
            "facts": [{"request": dataclasses.asdict(r)} for r in self.requests],
            "sites": [dict(site) for site in self.sites],
        }


@dataclass
class ExternalBatchEditor:
    """Writes batches through an editor under test from ``make`` (a new one after each
    restore) with ``settings`` on ``loaded`` (see the module)."""

    make: Callable[[], BatchEditorUnderTest]
    loaded: LoadedModel
    settings: BatchSettings
    timeout: float | None = DEFAULT_TIMEOUT
    editor: BatchEditorUnderTest = field(init=False)
    _originals: dict[str, Tensor] = field(default_factory=dict, repr=False)
    _limit: TimeLimit = field(init=False, repr=False)
    _watched: WatchedWeights = field(init=False, repr=False)
    # why a refused AlphaEdit batch taints the editor under test until the next restore
    _tainted: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.editor = self.make()
        self._limit = TimeLimit(self.timeout, "batch")
        self._watched = WatchedWeights(self._limit)

    @property
    def name(self) -> str:
        return str(self.editor.name)

    def _modules(self, hp: MethodHParams) -> dict[str, nn.Module]:
        adapter, model = self.loaded.adapter, self.loaded.model
        return {
            adapter.edited_module_name(layer): adapter.edited_module(model, layer)
            for layer in hp.layers
        }

    def edit_batch(
        self,
        requests: Sequence[EditRequest],
        method: str = "memit",
        *,
        method_hparams: MethodHParams,
    ) -> ExternalBatchResult:
        """Write the batch in place through the editor under test; on any failure the model
        is as it was and ValueError says what the editor did."""
        if method_of(method_hparams) != method:
            raise ValueError(f"{method} given {type(method_hparams).__name__}")
        if self._tainted is not None:
            raise ValueError(f"not run: {self._tainted}")
        self._watched.require("write the next batch")
        model = self.loaded.model
        modules = self._modules(method_hparams)
        params = {name: stored_weight(module) for name, module in modules.items()}
        before = {name: p.detach().clone() for name, p in params.items()}
        for name, weight in before.items():
            self._originals.setdefault(name, weight)
        state = snapshot(model)
        edited = {f"{name}.weight" for name in modules}
        others = {n: (id(p), p._version) for n, p in model.named_parameters() if n not in edited}
        s = self.settings
        inputs = BatchInputs(
            self.loaded, list(requests), s.templates, s.C, s.hparams, method_hparams, s.seed
        )
        where = f"{self.loaded.name} for a batch of {len(requests)}"
        hung = f"{self.name} did not return within {seconds(self.timeout)} s on {where}"
        start = time.perf_counter()
        failure = None
        try:
            self._limit.run(lambda: self.editor.edit(inputs), f"editor {self.name}", hung)
        except EditorHung as error:
            failure = str(error)
        except Exception as error:
            failure = describe_raise(self.name, error, where)
        elapsed = time.perf_counter() - start
        outside = [
            n
            for n, p in model.named_parameters()
            if n in others and others[n] != (id(p), p._version)
        ]
        failure = failure or _bad_weights(modules, params, before)
        reset(state, model)
        if failure is not None or outside:
            _put_back(modules, params, before)
            self._watched.note(modules)
        if outside:
            raise RunStoppedError(
                f"{self.name} wrote into {', '.join(outside)}, outside the layers "
                f"{list(method_hparams.layers)} of {method}; that cannot be undone, so the run "
                "stops (the method's layers were put back)"
            )
        if failure is not None:
            if method == "alphaedit":  # its Kₚ may hold the refused batch's keys by now
                self._tainted = (
                    "an earlier alphaedit batch was refused, and the editor under test's memory "
                    "of earlier batches (Kₚ) may still hold its keys"
                )
            raise ValueError(f"the editor under test failed (model restored): {failure}")
        sites = []
        for layer, (name, module) in zip(method_hparams.layers, modules.items(), strict=True):
            weight = stored_weight(module)
            delta = torch.linalg.norm(weight.detach().double() - before[name].double())
            sites.append(
                {"layer": layer, "module_name": name, "delta_norm": float(delta) / weight.numel()}
            )
        self._watched.note(modules)
        return ExternalBatchResult(method, self.name, tuple(requests), tuple(sites), elapsed)

    def restore(self) -> None:
        """Every weight a batch wrote back as it was before the first batch, bit for bit, and
        a new editor under test for the next batch (it remembers none of the undone ones)."""
        self._watched.require("restore the weights")
        with torch.no_grad():
            for name, weight in self._originals.items():
                stored_weight(self.loaded.model.get_submodule(name)).copy_(weight)
        self._originals.clear()
        self._watched.clear()
        self.editor = self.make()
        self._tainted = None


def _bad_weights(
    modules: dict[str, nn.Module], params: dict[str, Tensor], before: dict[str, Tensor]
) -> str | None:
    """What the editor did to an edited weight that no batch may do, or None."""
    for name, module in modules.items():
        weight = stored_weight(module)
        was = before[name]
        if weight is not params[name]:
            return f"replaced {name}.weight by another tensor"
        if (weight.shape, weight.dtype, weight.device) != (was.shape, was.dtype, was.device):
            return (
                f"left {name}.weight {tuple(weight.shape)} {weight.dtype} on {weight.device}, "
                f"not {tuple(was.shape)} {was.dtype} on {was.device}"
            )
        if not bool(torch.isfinite(weight).all()):
            return f"wrote non-finite values into {name}.weight"
    return None


def _put_back(
    modules: dict[str, nn.Module], params: dict[str, Tensor], before: dict[str, Tensor]
) -> None:
    """The edited weights as they were before the batch: the same tensors, the same bits."""
    with torch.no_grad():
        for name, module in modules.items():
            param = params[name]
            if stored_weight(module) is not param:
                module.weight = param
            if param.shape == before[name].shape and param.dtype == before[name].dtype:
                param.copy_(before[name])
            else:
                param.data = before[name].clone()
