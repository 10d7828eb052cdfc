"""Shared by the batched editor's tests: an editor whose targets are given instead of
optimized (the target optimization is tested on its own), sixteen distinct facts, key
statistics with and without a null space, and the four checks the tiny families and SmolLM2
both pass (exact insertion, agreement with the float64 reference, a batch of one against
r-ROME, AlphaEdit's preserved keys), each returning what it measured."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rome_fast.edit.batch import hidden_at_subjects, module_outputs
from rome_fast.edit.batch_result import BatchResult
from rome_fast.edit.editor import Editor
from rome_fast.edit.request import EditRequest
from rome_fast.hparams.batched import MethodHParams
from rome_fast.methods.alphaedit.update import AlphaEditHParams
from rome_fast.methods.emmet.update import EmmetHParams
from rome_fast.methods.memit.update import MemitHParams
from rome_fast.model.loader import LoadedModel
from rome_ref import batched as rb
from tests.models import TEMPLATES, fresh_copy, fresh_model, key_dim, random_spd, tiny_hparams

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
EPS32 = torch.finfo(torch.float32).eps
EPS64 = torch.finfo(torch.float64).eps
# The four checks' bounds, each measured on the tiny families at its test in test_batch_editor
# and on SmolLM2 in test_batch_editor_smollm2 (which states its margins under the same bounds).
# The residual of an inserted fact is the float32 rounding of the edited weight, read through
# ‖W‖‖k‖/‖v‖: measured at most 1.8e-6 (≈ 15 ε₃₂, tiny-gpt2) over the four families and 16
# facts, at k_prompt and at k*; 64 ε₃₂ is a 4× margin.
INSERTED = 64 * EPS32
AGREES = 4096 * EPS64  # ΔW against rome_ref.batched, relative
BATCH_OF_ONE = 16 * EPS32  # EMMET λₑ = 0 on one fact against r-ROME's ΔW, relative
PRESERVED = 64 * EPS64  # ‖ΔW U‖ / ‖ΔW‖‖U‖, U the preserved keys' subspace of C
TargetsFn = Callable[[LoadedModel, Sequence[EditRequest], int], Tensor]
StatsFn = Callable[[LoadedModel, int], Tensor]
# A tiny family's name (a fresh copy of its cached random model) or a loaded model (copied).
Model = str | LoadedModel


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
    model: Model = "tiny-gpt2",
    stats: StatsFn = spd_per_layer,
    targets_fn: TargetsFn = shifted_targets,
    layer: int | None = None,
) -> tuple[LoadedModel, GivenTargetsEditor]:
    """A fresh copy of ``model`` and an editor of it with fixed templates, random statistics
    and a short v* loop (3 iterations) for its single edits at ``layer`` (default: the
    model's)."""
    loaded = fresh_model(model) if isinstance(model, str) else fresh_copy(model)
    changes = {} if layer is None else {"layer": layer}
    cls = type("Given", (GivenTargetsEditor,), {"targets_fn": staticmethod(targets_fn)})
    editor = cls(
        loaded, hparams=tiny_hparams(loaded.name, **changes), templates=TEMPLATES, stats=stats
    )
    return loaded, editor


def exact_emmet(layer: int) -> EmmetHParams:
    """EMMET at ``layer`` with λₑ = 0: every fact inserted exactly (λₘ = 1)."""
    return EmmetHParams(layers=(layer,), mom2_update_weight=1.0, emmet_lambda=0.0)


def one_layer(method: str, layer: int) -> tuple[MethodHParams, StatsFn]:
    """``method``'s hyperparameters at ``layer`` alone and the statistics it is checked with:
    a well-conditioned C for MEMIT and EMMET (λₑ = 0.1, regularized), a C with a null space
    for AlphaEdit."""
    if method == "memit":
        return MemitHParams(layers=(layer,), mom2_update_weight=1.0), spd_per_layer
    if method == "emmet":
        emmet = EmmetHParams(layers=(layer,), mom2_update_weight=2.0, emmet_lambda=0.1)
        return emmet, spd_per_layer
    if method == "alphaedit":
        return AlphaEditHParams(layers=(layer,)), low_rank_spd
    raise ValueError(f"unknown method {method!r}")


METHODS = ("alphaedit", "emmet", "memit")


def reference_delta(
    hparams: MethodHParams, C: np.ndarray, K: np.ndarray, R: np.ndarray
) -> np.ndarray:
    """``rome_ref.batched``'s ΔW for ``hparams``' method on the same C, K and R (float64)."""
    if isinstance(hparams, MemitHParams):
        return rb.memit_delta(C, K, R, hparams.mom2_update_weight)
    if isinstance(hparams, EmmetHParams):
        return rb.emmet_delta(
            C, K, R, hparams.mom2_update_weight, hparams.emmet_lambda, hparams.update_norm_lambda
        )
    P = rb.null_space_projector(C, hparams.nullspace_threshold)
    return rb.alphaedit_delta(P, K, R, hparams.L2)


def residuals(result: BatchResult, at: str) -> list[float]:
    """Each fact's relative residual ‖Ŵk + b − v‖ / ‖v‖ at ``at`` (``k_prompt``, ``k_star``)."""
    return [getattr(fact, f"relative_residual_{at}") for fact in result.facts]


def insert_sixteen(model: Model, layer: int, keys: str = "k_prompt") -> BatchResult:
    """The sixteen FACTS written at ``keys`` by EMMET with λₑ = 0 at ``layer``."""
    result = batch_editor(model, layer=layer)[1].edit_batch(
        FACTS, "emmet", keys=keys, method_hparams=exact_emmet(layer)
    )
    assert len(result.facts) == len(FACTS)
    return result


def reference_misfit(model: Model, method: str, layer: int) -> float:
    """‖ΔW − ΔW_ref‖_F / ‖ΔW_ref‖_F for one ``method`` batch of the sixteen FACTS at
    ``layer``: the written factors' ΔW against ``rome_ref.batched`` on the same keys (the
    result's), residuals (targets − hidden states before) and C."""
    hparams, stats = one_layer(method, layer)
    loaded, editor = batch_editor(model, stats=stats, layer=layer)
    residual = shifted_targets(loaded, FACTS, layer) - hidden_at_subjects(loaded, layer, FACTS)
    result = editor.edit_batch(FACTS, method, method_hparams=hparams)
    K = result.keys[0].double().numpy()
    C = stats(loaded, layer).double().numpy()
    expected = reference_delta(hparams, C, K, residual.double().numpy())
    fast = result.update.sites[0].factors.delta().double().numpy()
    return float(np.linalg.norm(fast - expected) / np.linalg.norm(expected))


def batch_of_one_misfit(model: Model, layer: int, request: EditRequest = FACTS[0]) -> float:
    """EMMET with λₑ = 0, one fact, at k*, against r-ROME's update for the same key and value
    (SPEC §7): ‖ΔW − ΔW_r-ROME‖_F / ‖ΔW_r-ROME‖_F. The targets put r-ROME's v* at the bare
    prompt's hidden state."""
    loaded, single = batch_editor(model, layer=layer)
    rome = single.edit(request, "r-rome")
    single.revert(rome)
    module = loaded.adapter.edited_module(loaded.model, layer)
    # the hidden state moves by what r-ROME asks of the module at k*: v* − (W k* + b)
    shift = rome.v_star[:, None] - module_outputs(module, rome.k_star[:, None])

    def rome_targets(model: LoadedModel, requests: Sequence[EditRequest], layer: int) -> Tensor:
        return hidden_at_subjects(model, layer, requests) + shift

    batch = batch_editor(model, targets_fn=rome_targets, layer=layer)[1].edit_batch(
        [request], "emmet", keys="k_star", method_hparams=exact_emmet(layer)
    )
    expected = rome.update.sites[0].factors.delta()
    got = batch.update.sites[0].factors.delta().float()
    return float((got - expected).norm() / expected.norm())


def preserved_leak(model: Model, layers: tuple[int, ...]) -> float:
    """AlphaEdit's sixteen FACTS at ``layers`` with a C that has a null space: the largest,
    over the layers, of ‖ΔW U‖ / (‖ΔW‖ ‖U‖), U the eigenvectors of C at or above the
    null-space threshold (the preserved keys' subspace), read in float64."""
    hparams = AlphaEditHParams(layers=layers)
    loaded, editor = batch_editor(model, stats=low_rank_spd)
    result = editor.edit_batch(FACTS, "alphaedit", method_hparams=hparams)
    leaks = []
    for site in result.update:
        C = low_rank_spd(loaded, site.layer).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(C)
        preserved = eigenvectors[:, eigenvalues >= hparams.nullspace_threshold]
        delta = site.factors.delta()
        leaks.append(float((delta @ preserved).norm() / (delta.norm() * preserved.norm())))
    return max(leaks)
