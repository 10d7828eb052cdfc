"""AlphaEdit's hyperparameters, its null space and its solve (SPEC §7,
``rome_ref.batched.alphaedit_delta``).

``ΔW = R Kᵀ P ((KKᵀ + KₚKₚᵀ) P + αI)⁻¹`` with ``P = U Uᵀ``, U the eigenvectors of C with
eigenvalue below ``nullspace_threshold``: ΔW = ΔW P, so keys in C's dominant subspace (the
preserved knowledge) keep their outputs. Kₚ are the keys of the earlier edits of a sequential
run: ``NullSpaceLayer`` holds U and their projected Gram matrix for one layer, per editor
(never a process global: the public ``cache_c`` leaks across runs, EasyEdit #613).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from rome_fast.methods.checks import check_layers, check_weight
from rome_fast.solve.batch import (
    Conditioning,
    null_space_basis,
    projected_factors,
    projected_gram,
)
from rome_fast.solve.low_rank import Factors


@dataclass(frozen=True)
class AlphaEditHParams:
    """Defaults: EasyEdit's GPT-J file (``AlphaEdit/gpt-j-6B.yaml``); ``PUBLIC`` has the rest."""

    layers: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
    nullspace_threshold: float = 2e-2  # eigenvalues of C below it span the null space
    L2: float = 10.0  # α, the ridge on the projected system

    def __post_init__(self) -> None:
        check_layers("AlphaEdit", self.layers)
        check_weight(
            "AlphaEdit", "nullspace_threshold", self.nullspace_threshold, zero_allowed=False
        )
        check_weight("AlphaEdit", "L2", self.L2, zero_allowed=False)


# EasyEdit's AlphaEdit yamls (hparams/AlphaEdit/*.yaml)
PUBLIC: dict[str, AlphaEditHParams] = {
    "gpt-j-6B": AlphaEditHParams(),
    "gpt2-xl": AlphaEditHParams(layers=(13, 14, 15, 16, 17)),
    "llama3-8b": AlphaEditHParams(layers=(4, 5, 6, 7, 8), L2=1.0),
    "llama3.1-8b": AlphaEditHParams(layers=(4, 5, 6, 7, 8)),
    "qwen2.5-7b": AlphaEditHParams(layers=(4, 5, 6, 7, 8), L2=1.0),
}


@dataclass
class NullSpaceLayer:
    """One edited layer's null space ``basis`` U (d_in, r), computed once from the unedited
    model's C, and ``earlier`` = Σ UᵀKₚKₚᵀU (r, r) over the edits written so far."""

    basis: Tensor
    earlier: Tensor | None = field(default=None)

    @classmethod
    def from_covariance(
        cls, C: Tensor, hparams: AlphaEditHParams, *, dtype: torch.dtype = torch.float64
    ) -> NullSpaceLayer:
        basis = null_space_basis(C.to(dtype), hparams.nullspace_threshold)
        if basis.shape[1] == 0:
            raise ValueError(
                f"C has no eigenvalue below nullspace_threshold = {hparams.nullspace_threshold:g} "
                "(AlphaEdit would write nothing); raise the threshold or check the statistics"
            )
        return cls(basis)

    def factors(
        self, K: Tensor, R: Tensor, hparams: AlphaEditHParams
    ) -> tuple[Factors, Conditioning]:
        """ΔW for keys ``K`` (d_in, n) and residuals ``R`` (d_out, n) given the earlier edits:
        factors ``left = R``, ``right = U S⁻¹ UᵀK``."""
        return projected_factors(self.basis, K, R, hparams.L2, self.earlier)

    def remember(self, K: Tensor) -> None:
        """Add an applied batch's keys (d_in, n) to the earlier edits."""
        added = projected_gram(self.basis, K)
        self.earlier = added if self.earlier is None else self.earlier + added
