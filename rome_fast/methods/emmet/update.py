"""EMMET's hyperparameters and its solve (SPEC §7, ``rome_ref.batched.emmet_delta``).

``ΔW = R D⁻¹ KᵀC'⁻¹`` with ``C' = λₘC + λᵤI`` and ``D = KᵀC'⁻¹K + λₑI``. With λₑ = 0 every fact
is inserted exactly; a singular D (two facts with the same key) is refused naming the two facts
where the public code silently takes a pseudo-inverse. C' is factored once per layer
(``emmet_covariance``), in float64 by default (docs/results/batched-solve.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rome_fast.methods.checks import check_layers, check_weight
from rome_fast.solve.batch import Conditioning, gram_factors
from rome_fast.solve.low_rank import Factors
from rome_fast.solve.rank_one import CovarianceFactor


@dataclass(frozen=True)
class EmmetHParams:
    """Defaults: EasyEdit's GPT-J file (``EMMET/gpt-j-6B.yaml``); ``PUBLIC`` has the rest."""

    layers: tuple[int, ...] = (5,)
    mom2_update_weight: float = 100000.0  # λₘ, C' = λₘ C + λᵤ I
    emmet_lambda: float = 0.1  # λₑ, D = KᵀC'⁻¹K + λₑ I; 0 inserts exactly
    update_norm_lambda: float = 0.0  # λᵤ

    def __post_init__(self) -> None:
        check_layers("EMMET", self.layers)
        check_weight("EMMET", "mom2_update_weight", self.mom2_update_weight, zero_allowed=False)
        check_weight("EMMET", "emmet_lambda", self.emmet_lambda, zero_allowed=True)
        check_weight("EMMET", "update_norm_lambda", self.update_norm_lambda, zero_allowed=True)


# EasyEdit's EMMET yamls (hparams/EMMET/*.yaml)
PUBLIC: dict[str, EmmetHParams] = {
    "gpt-j-6B": EmmetHParams(),
    "gpt2-xl": EmmetHParams(layers=(17,), mom2_update_weight=10000.0),
    "llama-7b": EmmetHParams(),
    "llama3.2-3b": EmmetHParams(),
}


def emmet_covariance(
    C: Tensor, hparams: EmmetHParams, *, dtype: torch.dtype = torch.float64
) -> CovarianceFactor:
    """The Cholesky factor of ``C' = λₘ C + λᵤ I`` (d_in, d_in), once per layer."""
    identity = torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
    C_prime = hparams.mom2_update_weight * C + hparams.update_norm_lambda * identity
    return CovarianceFactor.from_matrix(C_prime, dtype=dtype)


def emmet_factors(
    cov_prime: CovarianceFactor, K: Tensor, R: Tensor, hparams: EmmetHParams
) -> tuple[Factors, Conditioning]:
    """EMMET at one layer: ``cov_prime`` from ``emmet_covariance``, ``K`` (d_in, n), ``R``
    (d_out, n). Factors ``left = R D⁻¹``, ``right = C'⁻¹K``; ``SingularBatchError`` naming two
    facts when D is singular."""
    return gram_factors(cov_prime, K, R, hparams.emmet_lambda)
