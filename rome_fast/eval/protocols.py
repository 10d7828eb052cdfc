"""The interfaces a run is driven through: the editor (:class:`EditorLike`) and the
model-side work of its loops (:class:`SingleWork`, :class:`StreamWork`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

import torch

from rome_fast.edit.prepared import PreparedEdit
from rome_fast.edit.request import EditRequest, EditResult
from rome_fast.hparams.batched import MethodHParams


class SingleWork(Protocol):
    """The model-side work of a single-edit run, done in this process (the
    :class:`~rome_fast.eval.runner.Runner` itself) or by workers
    (``rome_fast.eval.distributed``); the loop orders and writes rows."""

    def single_row(self, variant: str, index: int) -> dict[str, Any]: ...


class StreamWork(Protocol):
    """The model-side work of a sequential stream, here or on one worker (as ``SingleWork``)."""

    def begin_stream(self, variant: str, weights: Mapping[str, torch.Tensor]) -> None: ...

    def stream_row(self, variant: str, index: int) -> dict[str, Any]: ...

    def edited_weights(self) -> dict[str, torch.Tensor]: ...

    def glue_scores(self) -> dict[str, Any]: ...

    def final_row(self, index: int) -> dict[str, Any]: ...

    def end_stream(self) -> None: ...


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
