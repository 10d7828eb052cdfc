"""The rank-one pieces every variant is built from: the Cholesky factor of C, the factors
``RankOne`` of ΔW, what a variant sees (``UpdateInputs``) and the insertion rule.

Maths as in ``rome_ref.update`` (SPEC §2). ``rome_fast.methods.rome.variants`` builds the registered
variants from these; ``rome_fast.methods.rome.update`` validates inputs and runs a variant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def _default_factor_dtype(device: torch.device) -> torch.dtype:
    # float64 solves are cheap on CPU and slow on most GPUs
    return torch.float64 if device.type == "cpu" else torch.float32


class CovarianceFactor:
    """Lower Cholesky factor ``L`` of the key second moment ``C = L Lᵀ``.

    Computed once (``from_matrix``) and reused for every edit of the same layer; ``solve``
    applies ``C⁻¹`` by two triangular solves instead of forming an inverse.
    """

    def __init__(self, cholesky: Tensor) -> None:
        self.cholesky = cholesky  # (d_in, d_in), lower triangular

    @classmethod
    def from_matrix(cls, C: Tensor, *, dtype: torch.dtype | None = None) -> CovarianceFactor:
        """Factor ``C`` (d_in, d_in), symmetric positive definite.

        ``dtype`` defaults to float64 on CPU and float32 on other devices. Raises ValueError
        if C is not square, not finite, not symmetric, or not positive definite.
        """
        if C.ndim != 2 or C.shape[0] != C.shape[1]:
            raise ValueError(f"C must be a square (d_in, d_in) matrix, got shape {tuple(C.shape)}")
        if not torch.is_floating_point(C):
            raise ValueError(f"C must be a floating-point tensor, got dtype {C.dtype}")
        require_finite("C", C)
        dtype = dtype or _default_factor_dtype(C.device)
        # Tolerate the asymmetry of float32 accumulation, nothing more.
        tolerance = 64 * torch.finfo(C.dtype).eps * float(C.abs().max())
        asymmetry = float((C - C.T).abs().max())
        if asymmetry > tolerance:
            raise ValueError(
                f"C is not symmetric (max |C − Cᵀ| = {asymmetry:.3g}); pass the key second "
                "moment E[k kᵀ] (symmetrize it with (C + C.T) / 2 if it was accumulated unevenly)"
            )
        C_sym = ((C + C.T) / 2).to(dtype)
        cholesky, info = torch.linalg.cholesky_ex(C_sym)
        if int(info) != 0:
            raise ValueError(
                "C is not symmetric positive definite (Cholesky failed at column "
                f"{int(info)}); check the key statistics (enough samples, no constant features) "
                "or regularize with C + λI for a small λ > 0"
            )
        return cls(cholesky)

    @property
    def d_in(self) -> int:
        return int(self.cholesky.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.cholesky.dtype

    @property
    def device(self) -> torch.device:
        return self.cholesky.device

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> CovarianceFactor:
        """The same factor on another device / in another dtype (a cast does not refactor)."""
        return CovarianceFactor(self.cholesky.to(device=device, dtype=dtype))

    def solve(self, k: Tensor) -> Tensor:
        """``C⁻¹ k`` for ``k`` of shape (d_in,) or (d_in, n), in the factor's dtype."""
        rhs = k.to(device=self.device, dtype=self.dtype)
        column = rhs[:, None] if rhs.ndim == 1 else rhs  # (d_in, n)
        # Two triangular solves (L y = k, Lᵀ x = y): measured 4–38× faster on CPU than
        # torch.cholesky_solve for one right-hand side at d = 1536.
        y = torch.linalg.solve_triangular(self.cholesky, column, upper=False)
        x: Tensor = torch.linalg.solve_triangular(self.cholesky.mT, y, upper=True)
        return x[:, 0] if rhs.ndim == 1 else x


@dataclass(frozen=True)
class RankOne:
    """``ΔW = outer(left, right)``: ``left`` (d_out,), ``right`` (d_in,).

    ``denominator`` (0-d) is the ``u(direction_key)ᵀ insert_key`` the update divided by,
    kept for diagnostics (near zero means a disabling edit).
    """

    left: Tensor
    right: Tensor
    denominator: Tensor

    def delta(self) -> Tensor:
        """The dense ΔW, (d_out, d_in)."""
        return torch.outer(self.left, self.right)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> RankOne:
        return RankOne(
            self.left.to(device=device, dtype=dtype),
            self.right.to(device=device, dtype=dtype),
            self.denominator.to(device=device, dtype=dtype),
        )


@dataclass(frozen=True)
class UpdateInputs:
    """What a variant sees; all tensors in the accumulation dtype on W0's device.

    ``v_star`` already has the bias subtracted (it is the target of ``W0 @ k``).
    """

    W0: Tensor  # (d_out, d_in)
    cov: CovarianceFactor
    k_star: Tensor  # (d_in,) prefix-averaged key
    k_prompt: Tensor  # (d_in,) bare-prompt key
    v_star: Tensor  # (d_out,)


def insertion_update(inp: UpdateInputs, insert_key: Tensor, direction_key: Tensor) -> RankOne:
    """``ΔW = (v* − W0 insert_key) u(direction_key)ᵀ / (u(direction_key)ᵀ insert_key)``.

    ``W0 + ΔW`` maps ``insert_key`` to ``v*`` exactly and changes W only along
    ``u = C⁻¹ direction_key``. Raises ValueError when the denominator is zero at working
    precision or not finite.
    """
    u = inp.cov.solve(direction_key).to(inp.W0.dtype)  # (d_in,)
    denominator = u @ insert_key
    # Below this bound the sign of the dot product is rounding noise.
    noise = (
        insert_key.numel()
        * torch.finfo(u.dtype).eps
        * torch.linalg.norm(u)
        * torch.linalg.norm(insert_key)
    )
    if not bool(torch.isfinite(denominator)) or bool(denominator.abs() <= noise):
        raise ValueError(
            f"the update's denominator u(k)ᵀk = {float(denominator):.3g} is zero or not finite: "
            "the insert key and the direction key are orthogonal under C⁻¹, which would be a "
            "disabling edit with unbounded ΔW; use a variant whose keys agree ('r-rome' or "
            "'p-rome') or check the keys"
        )
    residual = inp.v_star - inp.W0 @ insert_key  # (d_out,)
    return RankOne(left=residual / denominator, right=u, denominator=denominator)


Variant = Callable[[UpdateInputs], RankOne]


def require_finite(name: str, x: Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"{name} contains NaN or infinite values; fix the upstream computation of {name}"
        )
