"""Plausible bugs in the batched solves, each a near-copy of ``rome_fast.testing_batch.ours``
with one mistake, and the battery property that must catch it (tests/test_batch_battery.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from rome_fast.solve.batch import (
    gram_factors,
    null_space_basis,
    projected_factors,
    projected_gram,
)
from rome_fast.solve.low_rank import Factors
from rome_fast.solve.rank_one import CovarianceFactor
from rome_fast.solve.schedule import ScheduleLayer
from rome_fast.testing_batch import ours
from rome_fast.testing_batch.battery import BatchedMethod


def _eye(C: Tensor) -> Tensor:
    return torch.eye(C.shape[0], dtype=C.dtype)


def memit_lambda_wrong_side(C: Tensor, K: Tensor, R: Tensor, lam: float) -> Factors:
    """ΔW = R Kᵀ (C + λKKᵀ)⁻¹: λ weighs the batch instead of C."""
    A = C + lam * K @ K.mT
    return Factors(R, torch.linalg.solve(A, K))


def memit_ridge_on_first_fact(C: Tensor, K: Tensor, R: Tensor, lam: float) -> Factors:
    """The ridge on the first fact's diagonal entry only (an indexing slip): order-dependent."""
    CinvK = CovarianceFactor.from_matrix(C, dtype=C.dtype).solve(K)
    D = K.mT @ CinvK
    D[0, 0] += lam
    return Factors(torch.linalg.solve(D, R.mT).mT, CinvK)


def memit_dense(C: Tensor, K: Tensor, R: Tensor, lam: float) -> Factors:
    """Forms the dense ΔW and hands it back as d_in terms (ΔW, I)."""
    delta = ours.memit(C, K, R, lam).delta()
    return Factors(delta, _eye(C))


def emmet_lambda_in_c(C: Tensor, K: Tensor, R: Tensor, lam_m: float, lam_e: float) -> Factors:
    """λₑ on the wrong side: added to C' (like λᵤ) instead of to D."""
    cov = CovarianceFactor.from_matrix(lam_m * C + lam_e * _eye(C), dtype=C.dtype)
    return gram_factors(cov, K, R, 0.0)[0]


def emmet_default_lambda(
    C: Tensor,
    K: Tensor,
    R: Tensor,
    lam_m: float,
    lam_e: float,  # noqa: ARG001  (ignoring it is this mutant's bug)
) -> Factors:
    """λₑ fixed at the yaml's 0.1 whatever is asked: λₑ = 0 no longer inserts exactly."""
    return ours.emmet(C, K, R, lam_m, 0.1)


def emmet_pinv(C: Tensor, K: Tensor, R: Tensor, lam_m: float, lam_e: float) -> Factors:
    """The public code's fallback: a pseudo-inverse of D where it is singular, no refusal."""
    CinvK = CovarianceFactor.from_matrix(lam_m * C, dtype=C.dtype).solve(K)
    D = K.mT @ CinvK + lam_e * torch.eye(K.shape[1], dtype=C.dtype)
    return Factors(R @ torch.linalg.pinv(D), CinvK)


def emmet_without_c(C: Tensor, K: Tensor, R: Tensor, lam_m: float, lam_e: float) -> Factors:
    """C' = λₘI (the statistics switched off): still inserts, no longer the C-norm minimum."""
    cov = CovarianceFactor.from_matrix(lam_m * _eye(C), dtype=C.dtype)
    return gram_factors(cov, K, R, lam_e)[0]


def alphaedit_projector_onto_preserved(
    C: Tensor, K: Tensor, R: Tensor, threshold: float, alpha: float, earlier_keys: Tensor | None
) -> Factors:
    """U from the eigenvalues above the threshold: the span of the preserved keys."""
    eigenvalues, eigenvectors = torch.linalg.eigh(C)
    U = eigenvectors[:, eigenvalues >= threshold]
    gram = None if earlier_keys is None else projected_gram(U, earlier_keys)
    return projected_factors(U, K, R, alpha, gram)[0]


def alphaedit_earlier_ignored(
    C: Tensor,
    K: Tensor,
    R: Tensor,
    threshold: float,
    alpha: float,
    earlier_keys: Tensor | None,  # noqa: ARG001  (ignoring it is this mutant's bug)
) -> Factors:
    """Kₚ never added (the cache reset between the edits of one sequential run)."""
    return projected_factors(null_space_basis(C, threshold), K, R, alpha)[0]


def schedule_not_divided(
    layers: Sequence[ScheduleLayer], output: Callable[[], Tensor], targets: Tensor
) -> list[Factors]:
    """Each layer writes the whole residual left (no division by the layers left)."""
    written = []
    for layer in layers:
        factors = layer.solve(layer.keys(), targets - output())
        layer.apply(factors)
        written.append(factors)
    return written


def schedule_stale_keys(
    layers: Sequence[ScheduleLayer], output: Callable[[], Tensor], targets: Tensor
) -> list[Factors]:
    """Every layer's keys read before any layer is edited."""
    keys = [layer.keys() for layer in layers]
    written = []
    for i, layer in enumerate(layers):
        factors = layer.solve(keys[i], (targets - output()) / (len(layers) - i))
        layer.apply(factors)
        written.append(factors)
    return written


def schedule_previous_layer_keys(
    layers: Sequence[ScheduleLayer], output: Callable[[], Tensor], targets: Tensor
) -> list[Factors]:
    """Layer i solved at layer i − 1's keys (an off-by-one in the layer index)."""
    written = []
    for i, layer in enumerate(layers):
        K = layers[max(i - 1, 0)].keys()
        factors = layer.solve(K, (targets - output()) / (len(layers) - i))
        layer.apply(factors)
        written.append(factors)
    return written


@dataclass(frozen=True)
class BatchMutant:
    method: BatchedMethod
    caught_by: str  # the property that targets this bug


MUTANTS: dict[str, BatchMutant] = {
    "memit_lambda_wrong_side": BatchMutant(
        replace(ours.OURS, memit=memit_lambda_wrong_side), "normal_equations"
    ),
    "memit_ridge_on_first_fact": BatchMutant(
        replace(ours.OURS, memit=memit_ridge_on_first_fact), "batch_order"
    ),
    "memit_dense": BatchMutant(replace(ours.OURS, memit=memit_dense), "rank_at_most_n"),
    "emmet_lambda_in_c": BatchMutant(replace(ours.OURS, emmet=emmet_lambda_in_c), "push_through"),
    "emmet_default_lambda": BatchMutant(
        replace(ours.OURS, emmet=emmet_default_lambda), "exact_insertion"
    ),
    "emmet_pinv": BatchMutant(replace(ours.OURS, emmet=emmet_pinv), "singular_refused"),
    "emmet_without_c_minimality": BatchMutant(
        replace(ours.OURS, emmet=emmet_without_c), "minimality"
    ),
    "emmet_without_c_batch_of_one": BatchMutant(
        replace(ours.OURS, emmet=emmet_without_c), "batch_of_one"
    ),
    "alphaedit_projector_onto_preserved": BatchMutant(
        replace(ours.OURS, alphaedit=alphaedit_projector_onto_preserved), "preserved_keys"
    ),
    "alphaedit_earlier_ignored": BatchMutant(
        replace(ours.OURS, alphaedit=alphaedit_earlier_ignored), "sequential"
    ),
    "schedule_not_divided": BatchMutant(
        replace(ours.OURS, schedule=schedule_not_divided), "schedule_equal_shares"
    ),
    "schedule_stale_keys": BatchMutant(
        replace(ours.OURS, schedule=schedule_stale_keys), "schedule_ends_at_targets"
    ),
    "schedule_previous_layer_keys": BatchMutant(
        replace(ours.OURS, schedule=schedule_previous_layer_keys), "schedule_ends_at_targets"
    ),
}
