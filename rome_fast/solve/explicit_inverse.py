"""C⁻¹k through an explicit inverse of C, as the public code computes it: a second correct way
to apply C⁻¹, whose rounding differs from the triangular solves of ``CovarianceFactor``. The
batteries measure their noise floors over both ways."""

from __future__ import annotations

import torch
from torch import Tensor

from rome_fast.solve.rank_one import CovarianceFactor


class ExplicitInverse(CovarianceFactor):
    """C⁻¹k through ``torch.linalg.inv(C)`` in C's dtype (``torch.linalg.inv`` of the public
    code); used where it was made, on its device and in its dtype."""

    def __init__(self, C: Tensor) -> None:
        super().__init__(CovarianceFactor.from_matrix(C, dtype=C.dtype).cholesky)
        self.inverse = torch.linalg.inv(C)  # (d_in, d_in)

    def to(
        self,
        device: torch.device | str | None = None,  # noqa: ARG002
        dtype: torch.dtype | None = None,  # noqa: ARG002
    ) -> CovarianceFactor:
        return self  # used on its device, in its dtype, where it was made

    def solve(self, k: Tensor) -> Tensor:
        solved: Tensor = self.inverse @ k.to(self.inverse.dtype)
        return solved
