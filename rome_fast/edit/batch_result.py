"""What a batched edit did (``BatchResult``): the update, one record per fact under the field
names a single edit's record uses, and the batch's own numbers.

``BatchResult.as_record()`` is its one JSON form (the edit log's entry, ``rome edit --method
--json``'s ``batch``), marked ``"kind": "batch"`` so that a log tells it from a single edit's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from rome_fast.edit.request import EditRequest, EditResult, site_records
from rome_fast.solve.batch import Conditioning
from rome_fast.solve.low_rank import Update

BATCH_KIND = "batch"


@dataclass(frozen=True)
class FactRecord:
    """One fact of a batch after the edit: residuals ``‖Ŵk + b − v‖ / ‖v‖`` of the last edited
    module at the fact's k* (mean over the templates) and k_prompt (bare prompt), v the
    output the fact asks for at its written key (``rome_fast.edit.batch.BatchWrite.values``);
    the cosine of its two keys; its target optimization's loss per iteration (total, and
    its parts as ``EditResult.loss_steps``) and Adam steps."""

    request: EditRequest
    relative_residual_k_star: float
    relative_residual_k_prompt: float
    key_cosine: float
    loss_trace: list[float]
    adam_steps: int
    loss_steps: list[dict[str, float]]

    def as_record(self) -> dict[str, Any]:
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        record["request"] = dataclasses.asdict(self.request)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> FactRecord:
        return cls(**{**record, "request": EditRequest(**record["request"])})


@dataclass(frozen=True)
class BatchResult:
    """What one ``Editor.edit_batch`` did: ``update`` one site per edited layer (rank ≤ n),
    ``facts`` in the order of the requests, ``conditioning`` and ``keys`` (the key matrix K
    (d_in, n) each site was written at; AlphaEdit's later batches project against them) per
    site, ``method_hparams`` the method's hyperparameters as written."""

    method: str
    key_choice: str
    update: Update
    facts: tuple[FactRecord, ...]
    conditioning: tuple[Conditioning, ...]
    method_hparams: dict[str, Any]
    templates: list[str]
    seed: int
    edit_seconds: float
    timings: dict[str, float]
    keys: tuple[Tensor, ...] = field(repr=False)

    @property
    def module_names(self) -> tuple[str, ...]:
        """The edited modules, in the order they were written."""
        return tuple(site.module_name for site in self.update)

    @property
    def requests(self) -> list[EditRequest]:
        return [fact.request for fact in self.facts]

    def as_record(self) -> dict[str, Any]:
        """Every field but the tensors as JSON values; ``sites``: each site's layer, module,
        rank, |Δ| and conditioning."""
        skipped = ("update", "facts", "conditioning", "keys")
        fields = [f.name for f in dataclasses.fields(self) if f.name not in skipped]
        record: dict[str, Any] = {"kind": BATCH_KIND}
        record.update((name, getattr(self, name)) for name in fields)
        record["facts"] = [fact.as_record() for fact in self.facts]
        record["sites"] = [
            {**site, "conditioning": dataclasses.asdict(conditioning)}
            for site, conditioning in zip(site_records(self.update), self.conditioning, strict=True)
        ]
        return record

    @classmethod
    def from_record(
        cls, record: dict[str, Any], update: Update, keys: tuple[Tensor, ...]
    ) -> BatchResult:
        """The result ``as_record`` was made from, given its update and keys per site."""
        kept = set(record) - {"kind", "facts", "sites"}
        return cls(
            update=update,
            keys=keys,
            facts=tuple(FactRecord.from_record(fact) for fact in record["facts"]),
            conditioning=tuple(Conditioning(**site["conditioning"]) for site in record["sites"]),
            **{key: record[key] for key in kept},
        )


def is_batch_record(record: dict[str, Any]) -> bool:
    """Whether a log entry is a batch's (a single edit's record has no ``kind``)."""
    return record.get("kind") == BATCH_KIND


Applied = EditResult | BatchResult  # what an editor's log holds
