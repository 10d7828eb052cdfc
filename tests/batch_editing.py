"""Shared by the batched editor's tests: an editor whose targets are given instead of
optimized (the target optimization is tested on its own), sixteen distinct facts, and key
statistics with and without a null space."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rome_fast.edit.batch import hidden_at_subjects
from rome_fast.edit.editor import Editor
from rome_fast.edit.request import EditRequest
from rome_fast.model.loader import LoadedModel
from tests.models import TEMPLATES, fresh_model, key_dim, random_spd, tiny_hparams

CITIES = ("Rome", "Paris", "Berlin", "Madrid", "Vienna", "Prague", "Lisbon", "Oslo")
# Sixteen facts with distinct subjects (so distinct keys) and two prompt shapes.
FACTS = tuple(
    EditRequest(prompt, f"{name} {surname}", CITIES[(i + j) % len(CITIES)])
    for i, name in enumerate(("Anna", "Boris", "Clara", "David"))
    for j, (surname, prompt) in enumerate(
        (
            ("Keller", "{} lives in the city of"),
            ("Moreau", "{} was born in"),
            ("Novak", "{} lives in the city of"),
            ("Silva", "{} was born in"),
        )
    )
)
TargetsFn = Callable[[LoadedModel, Sequence[EditRequest], int], Tensor]


@dataclass(frozen=True)
class GivenTargets:
    """The targets of a batch, as the target optimization returns them."""

    targets: Tensor  # (d, n)
    loss_traces: list[list[float]]
    loss_steps: list[list[dict[str, float]]]
    adam_steps: list[int]


def shifted_targets(loaded: LoadedModel, requests: Sequence[EditRequest], layer: int) -> Tensor:
    """Each fact's hidden state at ``layer`` now, moved by one typical norm in a seeded random
    direction: (d, n)."""
    H = hidden_at_subjects(loaded, layer, requests)
    noise = torch.randn(H.shape, generator=torch.Generator().manual_seed(len(requests)))
    shifted: Tensor = H + noise * H.norm(dim=0) / H.shape[0] ** 0.5
    return shifted


class GivenTargetsEditor(Editor):
    """An ``Editor`` whose batches take their targets from ``targets_fn`` instead of the
    n-fact optimization."""

    targets_fn: TargetsFn = staticmethod(shifted_targets)

    def _batch_targets(
        self, requests: Sequence[EditRequest], _templates: list[str], layer: int
    ) -> GivenTargets:
        targets = type(self).targets_fn(self.loaded, requests, layer)
        return GivenTargets(
            targets, [[] for _ in requests], [[] for _ in requests], [0] * len(requests)
        )


def spd_per_layer(loaded: LoadedModel, layer: int) -> Tensor:
    """A well-conditioned random C per layer (no null space)."""
    return random_spd(key_dim(loaded, layer), seed=layer)


def low_rank_spd(loaded: LoadedModel, layer: int) -> Tensor:
    """C with half its spectrum at 1e-3, below AlphaEdit's null-space threshold 2e-2 (the rest
    around 1): (d_in, d_in) float32."""
    d = key_dim(loaded, layer)
    A = torch.randn(d, d // 2, generator=torch.Generator().manual_seed(layer))
    return (A @ A.T / (d // 2) + 1e-3 * torch.eye(d)).float()


def batch_editor(
    family: str = "tiny-gpt2",
    stats: Callable[[LoadedModel, int], Tensor] = spd_per_layer,
    targets_fn: TargetsFn = shifted_targets,
) -> tuple[LoadedModel, GivenTargetsEditor]:
    """A fresh tiny model and an editor of it with fixed templates and random statistics."""
    loaded = fresh_model(family)
    cls = type("Given", (GivenTargetsEditor,), {"targets_fn": staticmethod(targets_fn)})
    editor = cls(loaded, hparams=tiny_hparams(family), templates=TEMPLATES, stats=stats)
    return loaded, editor
