"""The interfaces a run is driven through: the editor (:class:`EditorLike`) and the
model-side work of its loops (:class:`SingleWork`, :class:`StreamWork`; a batched method's
:class:`SingleBatchWork`, :class:`BatchStreamWork`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

import torch

from rome_fast.edit.batch_result import Applied
from rome_fast.edit.prepared import PreparedEdit
from rome_fast.edit.request import EditRequest, EditResult
from rome_fast.hparams.batched import MethodHParams


class SingleWork(Protocol):
    """The model-side work of a single-edit run, done in this process (the
    :class:`~rome_fast.eval.runner.Runner` itself) or by workers
    (``rome_fast.eval.distributed``); the loop orders and writes rows."""

    def single_row(self, variant: str, index: int) -> dict[str, Any]: ...


class Stream(Protocol):
    """What every sequential stream's loop asks of its model, here or on one worker (as
    ``SingleWork``): the stream started from the unedited model plus ``weights`` (a
    checkpoint's), its weights, checks and final scores, its end."""

    def begin_stream(self, variant: str, weights: Mapping[str, torch.Tensor]) -> None: ...

    def edited_weights(self) -> dict[str, torch.Tensor]: ...

    def glue_scores(self) -> dict[str, Any]: ...

    def final_row(self, index: int) -> dict[str, Any]: ...

    def end_stream(self) -> None: ...


class StreamWork(Stream, Protocol):
    """The model-side work of a sequential stream of single edits."""

    def stream_row(self, variant: str, index: int) -> dict[str, Any]: ...


class EditOutcome(Protocol):
    """What a run reads of any editor's result: the modules the edit changed and its record
    (``EditResult.as_record``; an editor under test records what its weights show)."""

    @property
    def module_names(self) -> tuple[str, ...]: ...

    def as_record(self) -> dict[str, Any]: ...


PreparedT = TypeVar("PreparedT")
ResultT = TypeVar("ResultT", bound=EditOutcome)


class EditorLike(Protocol[PreparedT, ResultT]):
    """What runs need from an editor: ours (:class:`rome_fast.edit.editor.Editor`,
    ``EditorLike[PreparedEdit, EditResult]``) or one under test
    (``rome_fast.conform.external``, whose results are measured from the weights)."""

    def edit(self, request: EditRequest, variant: str = ...) -> ResultT: ...

    def prepare(self, request: EditRequest) -> PreparedT: ...

    def apply(self, prepared: PreparedT, variant: str = ...) -> ResultT: ...

    def revert(self, result: ResultT) -> None: ...

    def restore(self) -> None: ...


# Ours: what ``rome eval --degrade`` can break (it flips our result's update).
OurEditor = EditorLike[PreparedEdit, EditResult]
# Any editor a run drives: the runner reads only ``EditOutcome`` of its results.
AnyEditor = EditorLike[Any, Any]


class BatchWriter(Protocol):
    """What a batched method's run writes its batches with (``rome_fast.eval.batch_runs``):
    ours (:class:`rome_fast.edit.editor.Editor`, whose ``BatchResult`` is logged and replayed)
    or an editor under test (``rome_fast.conform.batch_external``, whose result records what
    its weights show). ``edit_batch`` writes in place or raises ValueError with the model as it
    was; ``restore`` puts every weight it wrote back as it found it."""

    def edit_batch(
        self, requests: Sequence[EditRequest], method: str = ..., *, method_hparams: MethodHParams
    ) -> EditOutcome: ...

    def restore(self) -> None: ...


class SingleBatchWork(Protocol):
    """The model-side work of a batched method's single mode (``rome_fast.eval.batch_runs``),
    here or on workers (as ``SingleWork``): batch ``batch``'s rows, unflagged, written on the
    unedited model, which is restored after it."""

    def single_batch(self, batch: int) -> list[dict[str, Any]]: ...


class BatchStreamWork(Stream, Protocol):
    """The model-side work of a batched method's sequential stream, here or on one worker:
    the batches a checkpoint holds replayed (``Editor.replay``: the weights and AlphaEdit's
    memory of earlier keys), and each next batch's rows, unflagged, with what wrote it (the
    driver logs our ``BatchResult``)."""

    def replay(self, logged: Sequence[Applied]) -> None: ...

    def stream_batch(self, batch: int) -> tuple[list[dict[str, Any]], EditOutcome | None]: ...
