"""MEMIT's hyperparameters and its one-layer solve (SPEC §7, ``rome_ref.batched.memit_delta``).

``ΔW = R Kᵀ (λC + KKᵀ)⁻¹``, computed as ``R (KᵀC⁻¹K + λI)⁻¹ KᵀC⁻¹`` (the push-through identity)
so that only the cached Cholesky factor of C and an (n, n) system are solved per edit. The
factor's dtype is the precision: float64 unless the user asks otherwise, since float32 loses
about 0.06 κ(C) ε₃₂ relative accuracy (docs/results/batched-solve.md: 7% at κ(C) = 10⁷).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from rome_fast.methods.checks import check_layers, check_weight
from rome_fast.solve.batch import Conditioning, gram_factors
from rome_fast.solve.low_rank import Factors
from rome_fast.solve.rank_one import CovarianceFactor


@dataclass(frozen=True)
class MemitHParams:
    """Defaults: the public GPT-J file (``EleutherAI_gpt-j-6B.json``); ``PUBLIC`` has the rest."""

    layers: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
    mom2_update_weight: float = 15000.0  # λ, the weight of C against the batch's own keys

    def __post_init__(self) -> None:
        check_layers("MEMIT", self.layers)
        check_weight("MEMIT", "mom2_update_weight", self.mom2_update_weight, zero_allowed=False)


# the public MEMIT files (memit/hparams/MEMIT/*.json; EasyEdit's yamls agree)
PUBLIC: dict[str, MemitHParams] = {
    "gpt-j-6B": MemitHParams(),
    "gpt2-xl": MemitHParams(layers=(13, 14, 15, 16, 17), mom2_update_weight=20000.0),
    "llama3.2-3b": MemitHParams(layers=(4, 5, 6, 7, 8)),
}


def memit_factors(
    cov: CovarianceFactor, K: Tensor, R: Tensor, hparams: MemitHParams
) -> tuple[Factors, Conditioning]:
    """MEMIT at one layer: ``cov`` the factor of C, ``K`` (d_in, n), ``R`` (d_out, n) the
    residuals this layer must write. Factors ``left = R (KᵀC⁻¹K + λI)⁻¹``, ``right = C⁻¹K``."""
    return gram_factors(cov, K, R, hparams.mom2_update_weight)
