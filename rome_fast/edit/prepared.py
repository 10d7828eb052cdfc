"""The variant-independent part of an edit (``Editor.prepare``) and what it needs of the keys
and the target value, whichever editor (fast or naive) computed them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor

from rome_fast.edit.batch_result import Applied
from rome_fast.edit.request import EditRequest


class KeysLike(Protocol):
    """What an edit needs of the keys (fast ``keys.Keys`` or the naive ones)."""

    @property
    def k_star(self) -> Tensor: ...  # (d_in,)

    @property
    def k_prompt(self) -> Tensor: ...  # (d_in,)


class ValueLike(Protocol):
    """What an edit needs of the target value (``value.ValueResult`` or the naive one)."""

    @property
    def v_star(self) -> Tensor: ...  # (d_out,) desired module output

    @property
    def loss_trace(self) -> list[float]: ...

    @property
    def loss_steps(self) -> list[dict[str, float]]: ...


@dataclass(frozen=True)
class PreparedEdit:
    """Templates, keys and ``v*`` of one request, made on the model as it was then."""

    request: EditRequest
    layer: int
    templates: list[str]
    keys: KeysLike
    value: ValueLike
    timings: dict[str, float]
    seconds: float
    state: tuple[Applied, ...] = field(repr=False, compare=False)  # the edits applied then
