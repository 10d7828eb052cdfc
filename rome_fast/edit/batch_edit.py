"""Many facts in one edit: the body of ``Editor.edit_batch`` (MEMIT, EMMET, AlphaEdit).

One batch runs five phases, each timed: the context templates (the editor's), the statistics
(each method's matrix per edited layer, prepared once per editor), the targets Z (d, n) at
the last edited layer (one optimization for the n facts, ``Editor._batch_targets``), the
update (``rome_fast.edit.batch.write_batch``: keys per layer on the current weights, the
method's solve, written layer by layer) and the checks after it (finite weights, the guard).
Any failure restores every written weight from its pre-edit copy, bit-identical; a singular
batch is refused naming its two facts by their requests. The result enters the editor's log,
so ``revert``, ``restore``, ``save_log`` and ``replay_log`` treat it as any edit.

AlphaEdit's memory of earlier edits (Kₚ, per layer: ``NullSpaceLayer.earlier``) holds the keys
of the AlphaEdit batches written before the editor (``Editor(earlier_batches=...)``: another
editor's, not in this one's log), then of those in the editor's log: added after each such
batch, rebuilt in that order (so bit-identical) when an edit leaves the log
(``BatchStatistics.recall``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from rome_fast.edit.batch import BatchWrite, LayerSolve, write_batch
from rome_fast.edit.batch_keys import check_key_choice
from rome_fast.edit.batch_result import Applied, BatchResult, FactRecord
from rome_fast.edit.guard import Guard
from rome_fast.edit.ownership import require_finite_weights
from rome_fast.edit.request import EditRequest
from rome_fast.edit.residuals import relative_residual
from rome_fast.hparams.batched import Method, MethodHParams, check_method, method_hparams_at
from rome_fast.hparams.defaults import HParams
from rome_fast.infra.timer import PhaseTimer
from rome_fast.methods.alphaedit.update import AlphaEditHParams, NullSpaceLayer
from rome_fast.methods.emmet.update import EmmetHParams, emmet_covariance, emmet_factors
from rome_fast.methods.memit.update import MemitHParams, memit_factors
from rome_fast.model.loader import LoadedModel
from rome_fast.model.tokens import target_token_ids
from rome_fast.solve.batch import Conditioning, SingularBatchError
from rome_fast.solve.low_rank import Factors, SiteUpdate, Update
from rome_fast.solve.rank_one import CovarianceFactor

_HPARAMS_TYPES: dict[Method, type] = {
    "memit": MemitHParams,
    "emmet": EmmetHParams,
    "alphaedit": AlphaEditHParams,
}
MethodSolve = Callable[[Tensor, Tensor], tuple[Factors, Conditioning]]


class BatchTargetsLike(Protocol):
    """What a batch needs of its target optimization (``batch_targets.BatchTargets``)."""

    @property
    def targets(self) -> Tensor: ...  # (d, n): the last edited layer's desired hidden states

    @property
    def loss_traces(self) -> list[list[float]]: ...  # per fact, per iteration

    @property
    def loss_steps(self) -> list[list[dict[str, float]]]: ...  # per fact, per iteration

    @property
    def adam_steps(self) -> list[int]: ...  # per fact


class BatchStatistics:
    """One editor's per-layer matrices of the batched methods, each computed once from the
    editor's C of that layer (``Editor.covariance``): EMMET's factor of C' = λₘC + λᵤI, and
    AlphaEdit's null space with its memory of the earlier batches' keys (``earlier``: those
    written before the editor, then the logged ones)."""

    def __init__(self, earlier: Sequence[BatchResult] = ()) -> None:
        self._emmet: dict[tuple[int, float, float], CovarianceFactor] = {}
        self._null: dict[tuple[int, float], NullSpaceLayer] = {}
        self._earlier = tuple(earlier)

    def emmet(self, C: Callable[[], Tensor], layer: int, hp: EmmetHParams) -> CovarianceFactor:
        key = (layer, hp.mom2_update_weight, hp.update_norm_lambda)
        if key not in self._emmet:
            self._emmet[key] = emmet_covariance(C(), hp)
        return self._emmet[key]

    def null_space(
        self, C: Callable[[], Tensor], layer: int, hp: AlphaEditHParams, log: Sequence[Applied]
    ) -> NullSpaceLayer:
        key = (layer, hp.nullspace_threshold)
        if key not in self._null:
            self._null[key] = NullSpaceLayer.from_covariance(C(), hp)
            self.recall(log)
        return self._null[key]

    def recall(self, log: Sequence[Applied]) -> None:
        """Kₚ of every null space from the earlier AlphaEdit batches, then those in ``log``,
        in that order."""
        for layer in self._null.values():
            layer.earlier = None
        for result in (*self._earlier, *log):
            if isinstance(result, BatchResult):
                self.remember(result)

    def remember(self, result: BatchResult) -> None:
        """Add an applied AlphaEdit batch's keys to the null spaces of its layers (other
        methods' batches are not remembered: the public code keeps Kₚ for AlphaEdit only)."""
        if result.method != "alphaedit":
            return
        threshold = result.method_hparams["nullspace_threshold"]
        for site, keys in zip(result.update, result.keys, strict=True):
            layer = self._null.get((site.layer, threshold))
            if layer is not None:
                layer.remember(keys)


class BatchHost(Protocol):
    """What a batch needs of ``rome_fast.edit.editor.Editor`` (named here, not imported: the
    editor imports this module)."""

    loaded: LoadedModel
    hparams: HParams
    seed: int
    _batch_statistics: BatchStatistics

    @property
    def templates(self) -> list[str]: ...

    @property
    def log(self) -> list[Applied]: ...

    def covariance(self, layer: int) -> CovarianceFactor: ...

    def _batch_targets(
        self, requests: Sequence[EditRequest], templates: list[str], layer: int
    ) -> BatchTargetsLike: ...

    def _record(self, result: Applied, pre_edit: dict[str, Tensor]) -> None: ...

    def _copy_back(self, weights: dict[str, Tensor]) -> None: ...


def edit_batch(
    editor: BatchHost,
    requests: Sequence[EditRequest],
    method: str,
    key_choice: str,
    method_hparams: MethodHParams | None,
    guard: Guard | None,
) -> BatchResult:
    """``Editor.edit_batch``'s work (see the module docstring)."""
    start = time.perf_counter()
    known = check_method(method)
    keys = check_key_choice(key_choice)
    hp = _check_hparams(editor, known, method_hparams)
    facts = _check_requests(editor, requests)
    timer = PhaseTimer()
    with timer.phase("templates"):
        templates = editor.templates
    conditioning: dict[int, Conditioning] = {}
    with timer.phase("stats"):
        solves = {
            layer: _conditioned(_method_solve(editor, hp, layer), conditioning, layer)
            for layer in hp.layers
        }
    with timer.phase("targets"):
        targets = editor._batch_targets(facts, templates, hp.layers[-1])
    with timer.phase("update"):  # write_batch solves and writes layer by layer
        try:
            written = write_batch(editor.loaded, facts, templates, solves, targets.targets, keys)
        except SingularBatchError as err:
            raise _naming_requests(err, facts) from None
    with timer.phase("apply"):
        try:
            require_finite_weights(editor.loaded.model, written.update)
            if guard is not None:
                guard.check(written.update)
            result = BatchResult(
                method=known,
                key_choice=keys,
                update=_on_cpu(written.update),
                facts=_fact_records(editor, written, targets, facts),
                conditioning=tuple(conditioning[layer] for layer in hp.layers),
                method_hparams=_as_record(hp),
                templates=templates,
                seed=editor.seed,
                # The statistics are computed once per layer and cached: not part of an edit.
                edit_seconds=time.perf_counter() - start - timer.timings["stats"],
                timings=timer.timings,
                keys=tuple(K.detach().cpu() for K in written.keys),
            )
            editor._record(result, written.pre_edit)
        except BaseException:
            editor._copy_back(written.pre_edit)
            raise
    editor._batch_statistics.remember(result)
    return result


def _check_hparams(editor: BatchHost, method: Method, hp: MethodHParams | None) -> MethodHParams:
    """The method's hyperparameters (when None: per model, placed at the editor's ROME layer
    where that is not the model's own), of the method's own type, with layers the model has."""
    chosen = (
        hp
        if hp is not None
        else method_hparams_at(method, editor.loaded.name, editor.hparams.layer)
    )
    expected = _HPARAMS_TYPES[method]
    if not isinstance(chosen, expected):
        raise ValueError(
            f"method {method!r} takes {expected.__name__}, got {type(chosen).__name__}; "
            "pass the method's own hyperparameters or None for the model's defaults"
        )
    n_layers = editor.loaded.adapter.n_layers(editor.loaded.model)
    if chosen.layers[-1] >= n_layers:
        raise ValueError(
            f"{method} layers {list(chosen.layers)} go past the model's {n_layers} layers "
            f"(0 to {n_layers - 1}); pass method_hparams with layers the model has"
        )
    return chosen


def _check_requests(editor: BatchHost, requests: Sequence[EditRequest]) -> list[EditRequest]:
    """The requests as a list, each target tokenizable (fails before any work)."""
    facts = list(requests)
    if not facts:
        raise ValueError("a batch needs at least one request; pass a non-empty list")
    for request in facts:
        target_token_ids(editor.loaded.tokenizer, request.target_new)
    return facts


def _method_solve(editor: BatchHost, hp: MethodHParams, layer: int) -> MethodSolve:
    """The method's solve at ``layer``, bound to its statistics (prepared here, once)."""
    cov = editor.covariance(layer)

    def second_moment() -> Tensor:  # C = L Lᵀ from the cached factor (d_in, d_in)
        return cov.cholesky @ cov.cholesky.mT

    if isinstance(hp, MemitHParams):
        return lambda K, R: memit_factors(cov, K, R.to(cov.device), hp)
    if isinstance(hp, EmmetHParams):
        prime = editor._batch_statistics.emmet(second_moment, layer, hp)
        return lambda K, R: emmet_factors(prime, K, R.to(prime.device), hp)
    null = editor._batch_statistics.null_space(second_moment, layer, hp, editor.log)
    return lambda K, R: null.factors(K.to(null.basis.device), R.to(null.basis.device), hp)


def _conditioned(solve: MethodSolve, into: dict[int, Conditioning], layer: int) -> LayerSolve:
    """``solve`` as ``write_batch`` takes it, noting each layer's conditioning in ``into``."""

    def factors(K: Tensor, R: Tensor) -> Factors:
        written, into[layer] = solve(K, R)
        return written

    return factors


def _naming_requests(err: SingularBatchError, facts: list[EditRequest]) -> SingularBatchError:
    """The refusal, naming the facts at fault by their requests (the model is unchanged)."""
    named = "; ".join(
        f"fact {i}: {facts[i].subject!r} -> {facts[i].target_new!r}" for i in err.facts
    )
    return SingularBatchError(f"refused the batch (model unchanged): {err} ({named})", err.facts)


def _as_record(hp: MethodHParams) -> dict[str, Any]:
    """The hyperparameters as JSON values (the layers as a list), as the log reads them back."""
    fields = dataclasses.asdict(hp).items()
    return {name: list(value) if isinstance(value, tuple) else value for name, value in fields}


def _on_cpu(update: Update) -> Update:
    """The update as the result and the log hold it: contiguous CPU factors in the
    accumulation dtype (as the log reads them back)."""
    return Update(tuple(SiteUpdate(s.layer, s.module_name, _cpu(s.factors)) for s in update))


def _cpu(factors: Factors) -> Factors:
    return Factors(factors.left.cpu().contiguous(), factors.right.cpu().contiguous())


def _fact_records(
    editor: BatchHost, written: BatchWrite, targets: BatchTargetsLike, facts: list[EditRequest]
) -> tuple[FactRecord, ...]:
    """Each fact's residuals at its k* and k_prompt against the value it asks of the last
    edited module, read from the module after the edit."""
    module = editor.loaded.model.get_submodule(written.update.sites[-1].module_name)
    records = []
    for i, (request, keys) in enumerate(zip(facts, written.last_keys, strict=True)):
        value = written.values[:, i]
        records.append(
            FactRecord(
                request=request,
                relative_residual_k_star=relative_residual(module, keys.k_star, value),
                relative_residual_k_prompt=relative_residual(module, keys.k_prompt, value),
                key_cosine=float(
                    torch.nn.functional.cosine_similarity(keys.k_star, keys.k_prompt, dim=0)
                ),
                loss_trace=targets.loss_traces[i],
                adam_steps=targets.adam_steps[i],
                loss_steps=targets.loss_steps[i],
            )
        )
    return tuple(records)
