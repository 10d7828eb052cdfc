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
from rome_fast.solve.low_rank import Factors, SiteUpdate, Update

# The fields held as tensors: the edit log stores them in safetensors, records leave them out
# (the update's factors too, stored per site; a record lists the sites).
TENSOR_FIELDS = ("k_star", "k_prompt", "v_star")


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
    """What one edit did: ``update`` holds ``ΔW = left @ rightᵀ`` per edited site (a ROME edit:
    one site, rank one) on each module's (d_out, d_in) weight.

    The factors are CPU tensors in the update's accumulation dtype (float32, or float64 for a
    float64 model), exactly as applied. ``delta_norm`` is the largest site's
    ``‖ΔW‖_F / numel(W)`` (what the guard bounds). Residuals are relative,
    ``‖Ŵk + b − v*‖ / ‖v*‖``, read from the edited module's output after the update.
    """

    request: EditRequest
    variant: str
    update: Update
    denominator: float
    delta_norm: float  # max over sites of ‖ΔW‖_F / numel(W)
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
    def module_names(self) -> tuple[str, ...]:
        """The edited modules, in the order they were written."""
        return tuple(site.module_name for site in self.update)

    @property
    def layer(self) -> int:
        """The edited layer of a one-site update (ROME); ValueError for several sites."""
        return self._only_site().layer

    @property
    def module_name(self) -> str:
        """The edited module of a one-site update (ROME); ValueError for several sites."""
        return self._only_site().module_name

    def _only_site(self) -> SiteUpdate:
        if len(self.update.sites) != 1:
            raise ValueError(
                f"this edit writes {len(self.update.sites)} sites {list(self.module_names)}; "
                "read result.update.sites for each one's layer and module"
            )
        return self.update.sites[0]

    def as_record(self) -> dict[str, Any]:
        """Every field but the tensors, as JSON values, under the field names; the request as
        a dict; ``sites``: each site's layer, module, rank and |Δ|. A one-site update also
        keeps ``layer`` and ``module_name`` at the top, where records of rank-one edits always
        had them. ``from_record`` with the tensors and the update rebuilds the result."""
        record = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in (*TENSOR_FIELDS, "update")
        }
        record["request"] = dataclasses.asdict(self.request)
        record["sites"] = site_records(self.update)
        if len(self.update.sites) == 1:
            record["layer"], record["module_name"] = self.layer, self.module_name
        return record

    @classmethod
    def from_record(
        cls, record: dict[str, Any], update: Update, tensors: dict[str, Tensor]
    ) -> EditResult:
        """The result ``as_record`` was made from, given its update and ``TENSOR_FIELDS``."""
        fields: dict[str, Any] = {key: tensors[key] for key in TENSOR_FIELDS}
        kept = set(record) - {"sites", "layer", "module_name"}  # rebuilt from ``update``
        fields.update({key: record[key] for key in kept}, request=EditRequest(**record["request"]))
        return cls(update=update, **fields)


def site_records(update: Update) -> list[dict[str, Any]]:
    """Each site's layer, module, rank and |Δ| (``normalized_delta_norm``), in write order."""
    return [
        {
            "layer": site.layer,
            "module_name": site.module_name,
            "rank": site.factors.rank,
            "delta_norm": normalized_delta_norm(site.factors),
        }
        for site in update
    ]


def normalized_delta_norm(factors: Factors) -> float:
    """``‖left @ rightᵀ‖_F / numel(W)`` without forming ΔW: ‖L Rᵀ‖_F² = Σ (LᵀL) ∘ (RᵀR)."""
    left, right = factors.left, factors.right  # (d_out, r), (d_in, r)
    numel = left.shape[0] * right.shape[0]
    if factors.rank == 1:  # ‖l‖‖r‖, rounded as rank-one records always were
        return float(torch.linalg.vector_norm(left) * torch.linalg.vector_norm(right)) / numel
    gram = (left.mT @ left) * (right.mT @ right)  # (r, r)
    return float(gram.sum().clamp_min(0).sqrt()) / numel
