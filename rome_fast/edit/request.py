"""What an edit is asked to do (``EditRequest``) and what it did (``EditResult``).

``EditResult.as_record()`` is the one JSON form of a result: the edit log's entries, the run
rows' diagnostics and the edit report all use it, so a field has one name everywhere.
"""

from __future__ import annotations

import dataclasses
import unicodedata
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rome_fast.model.tokens import split_prompt
from rome_fast.solve.rank_one import RankOne

# The fields held as tensors: the edit log stores them in safetensors, records leave them out.
TENSOR_FIELDS = ("left", "right", "k_star", "k_prompt", "v_star")


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: ``prompt`` holds ``{}`` where ``subject`` goes."""

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    case_id: str | int | None = None

    def __post_init__(self) -> None:
        split_prompt(self.prompt)  # exactly one "{}" slot
        if not _visible(self.subject):
            raise ValueError(
                f"the subject must hold a visible character, got {self.subject!r}; "
                "pass the subject as it appears in the prompt"
            )
        if not _visible(self.target_new):
            raise ValueError(f"target_new must hold a visible character, got {self.target_new!r}")
        if self.target_true is not None and self.target_new.strip() == self.target_true.strip():
            warnings.warn(
                f"the new target {self.target_new!r} equals the true one: the edit only "
                "reinforces what the model should already say",
                UserWarning,
                stacklevel=3,
            )


def _visible(text: str) -> bool:
    """Holds a character that is not whitespace, a control or a format (zero-width) one."""
    return any(not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf") for c in text)


@dataclass(frozen=True)
class EditResult:
    """What one edit did. ``ΔW = outer(left, right)`` on ``module_name``'s (d_out, d_in) weight.

    ``left``/``right`` are CPU tensors in the update's accumulation dtype (float32, or float64
    for a float64 model), exactly as applied. Residuals are relative, ``‖Ŵk + b − v*‖ / ‖v*‖``,
    read from the edited module's output after the update.
    """

    request: EditRequest
    variant: str
    layer: int
    module_name: str
    left: Tensor  # (d_out,)
    right: Tensor  # (d_in,)
    denominator: float
    delta_norm: float  # ‖ΔW‖_F / numel(W)
    relative_residual_k_star: float
    relative_residual_k_prompt: float
    key_cosine: float
    loss_trace: list[float]
    timings: dict[str, float]
    templates: list[str]
    seed: int
    edit_seconds: float
    k_star: Tensor = field(repr=False)  # (d_in,) float32
    k_prompt: Tensor = field(repr=False)  # (d_in,) float32
    v_star: Tensor = field(repr=False)  # (d_out,) float32, desired module output
    adam_steps: int = 0
    # Per v* iteration (rome_fast.edit.value.LOSS_PARTS): nll, kl, weight_decay (each as it enters
    # the total), total, and ‖δ‖ where the loss was evaluated.
    loss_steps: list[dict[str, float]] = field(default_factory=list)

    @property
    def rank_one(self) -> RankOne:
        return RankOne(self.left, self.right, torch.tensor(self.denominator, dtype=self.left.dtype))

    def as_record(self) -> dict[str, Any]:
        """Every field but the tensors, as JSON values, under the field names; the request as
        a dict. ``from_record`` with the tensors rebuilds the result."""
        record = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in TENSOR_FIELDS
        }
        record["request"] = dataclasses.asdict(self.request)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any], tensors: dict[str, Tensor]) -> EditResult:
        """The result ``as_record`` was made from, given its ``TENSOR_FIELDS``."""
        fields: dict[str, Any] = {key: tensors[key] for key in TENSOR_FIELDS}
        fields.update(record, request=EditRequest(**record["request"]))
        return cls(**fields)
