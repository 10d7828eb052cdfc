"""The batched solves MEMIT, EMMET and AlphaEdit share: n facts, one (n, n) or (r, r) system.

Maths as in ``rome_ref.batched`` (SPEC §7), rearranged so that nothing of size d_in × d_in is
factored per edit:

- ``gram_factors``: ``ΔW = R (KᵀC⁻¹K + ρI)⁻¹ KᵀC⁻¹`` through the cached Cholesky factor of C
  (``CovarianceFactor``). With C' = λₘC + λᵤI and ρ = λₑ it is EMMET; with C and ρ = λ it is
  MEMIT by the push-through identity ``Kᵀ(λC + KKᵀ)⁻¹ = (KᵀC⁻¹K + λI)⁻¹KᵀC⁻¹``.
- ``projected_factors``: AlphaEdit's ``ΔW = R Kᵀ P ((KKᵀ + E) P + αI)⁻¹`` with P = U Uᵀ: ΔWᵀ lies
  in range(U), so ``ΔW = R (UᵀK)ᵀ S⁻¹ Uᵀ`` with the SPD ``S = Uᵀ(KKᵀ + E)U + αI`` (r, r).

Both return ``Factors`` of rank n (left (d_out, n), right (d_in, n)) and the conditioning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rome_fast.solve.low_rank import Factors
from rome_fast.solve.rank_one import CovarianceFactor


class SingularBatchError(ValueError):
    """The facts' keys make the batch's system singular (e.g. one subject with two targets);
    ``facts`` holds the batch indices of the facts at fault (one: a zero key; two: the most
    collinear pair), for an editor to name them by their requests."""

    def __init__(self, message: str, facts: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.facts = facts


@dataclass(frozen=True)
class Conditioning:
    """How well posed a batch was.

    ``gram_min``/``gram_max``: the extreme eigenvalues of the facts' Gram matrix (KᵀC⁻¹K for
    MEMIT and EMMET, UᵀKKᵀU + UᵀEU for AlphaEdit) before regularization; ``system_cond``: the
    condition number of the (n, n) or (r, r) system actually solved (with its ρ or α).
    """

    gram_min: float
    gram_max: float
    system_cond: float


def residuals(W0: Tensor, K: Tensor, V: Tensor, bias: Tensor | None = None) -> Tensor:
    """``R = V − b − W0 K`` (d_out, n)."""
    shifted = V if bias is None else V - bias[:, None]
    return shifted - W0 @ K


def _most_collinear_pair(gram: Tensor) -> tuple[int, int, float]:
    """``(i, j, cosine)``: the two facts whose keys are closest to parallel under ``gram``."""
    scale = gram.diagonal().clamp_min(torch.finfo(gram.dtype).tiny).sqrt()
    cosine = gram / torch.outer(scale, scale)
    cosine.fill_diagonal_(0.0)
    flat = int(cosine.abs().argmax())
    i, j = divmod(flat, gram.shape[0])
    return min(i, j), max(i, j), float(cosine[i, j])


def _singular(system: Tensor, smallest: float, largest: float, what: str) -> SingularBatchError:
    """The refusal of a singular ``system`` (n, n), naming the two facts at fault."""
    spectrum = f"smallest eigenvalue {smallest:.3g}, largest {largest:.3g}"
    if system.shape[0] == 1:
        return SingularBatchError(f"{what} is singular ({spectrum}): fact 0 has a zero key", (0,))
    i, j, cosine = _most_collinear_pair(system)
    return SingularBatchError(
        f"{what} is singular ({spectrum}): the facts' keys are linearly dependent, facts {i} "
        f"and {j} most of all (cosine {cosine:.6f}; 1 means the same subject with two targets); "
        "drop one of them, or regularize (emmet_lambda > 0)",
        (i, j),
    )


def _spd_solve(gram: Tensor, ridge: float, rhs: Tensor, what: str) -> tuple[Tensor, Conditioning]:
    """``(gram + ρI)⁻¹ rhs`` by Cholesky. Refused as singular when λ_min ≤ n ε λ_max of the
    system in the working dtype (the numerical rank test: below it the solve is noise)."""
    n = gram.shape[0]
    eigenvalues = torch.linalg.eigvalsh(gram)  # (n,): cheap beside the d_in-sized work
    smallest, largest = float(eigenvalues[0]) + ridge, float(eigenvalues[-1]) + ridge
    system = gram + ridge * torch.eye(n, dtype=gram.dtype, device=gram.device)
    if smallest <= n * torch.finfo(gram.dtype).eps * largest:
        raise _singular(system, smallest, largest, what)
    cholesky, info = torch.linalg.cholesky_ex(system)
    if int(info) != 0:
        raise _singular(system, smallest, largest, what)
    conditioning = Conditioning(
        gram_min=float(eigenvalues[0]),
        gram_max=float(eigenvalues[-1]),
        system_cond=largest / smallest,
    )
    return torch.cholesky_solve(rhs, cholesky), conditioning


def gram_factors(
    cov: CovarianceFactor, K: Tensor, R: Tensor, ridge: float
) -> tuple[Factors, Conditioning]:
    """``ΔW = R (KᵀC⁻¹K + ρI)⁻¹ KᵀC⁻¹`` as factors ``left = R (KᵀC⁻¹K + ρI)⁻¹`` (d_out, n),
    ``right = C⁻¹K`` (d_in, n), computed in the factor's dtype.

    Raises ``SingularBatchError`` naming two facts when the (n, n) system is singular.
    """
    CinvK = cov.solve(K)  # (d_in, n)
    gram = K.to(CinvK.dtype).mT @ CinvK  # (n, n)
    gram = (gram + gram.mT) / 2
    # left = R S⁻¹ = (S⁻¹ Rᵀ)ᵀ with S symmetric
    solved, conditioning = _spd_solve(gram, ridge, R.to(CinvK.dtype).mT, "KᵀC⁻¹K + ρI")
    return Factors(solved.mT, CinvK), conditioning


def null_space_basis(C: Tensor, threshold: float) -> Tensor:
    """U (d_in, r): the eigenvectors of C with eigenvalue below ``threshold``, in C's dtype
    (C is only PSD here, so a symmetric eigensolver rather than Cholesky)."""
    eigenvalues, eigenvectors = torch.linalg.eigh((C + C.mT) / 2)
    basis: Tensor = eigenvectors[:, eigenvalues < threshold]
    return basis


def projected_gram(U: Tensor, K: Tensor) -> Tensor:
    """``Uᵀ K Kᵀ U`` (r, r): what a batch adds to AlphaEdit's store of earlier keys."""
    projected = U.mT @ K.to(U.dtype)  # (r, n)
    return projected @ projected.mT


def projected_factors(
    U: Tensor, K: Tensor, R: Tensor, alpha: float, earlier: Tensor | None = None
) -> tuple[Factors, Conditioning]:
    """AlphaEdit's ΔW as factors ``left = R`` (d_out, n), ``right = U S⁻¹ UᵀK`` (d_in, n),
    ``S = UᵀKKᵀU + UᵀEU + αI`` with ``earlier`` = UᵀEU (r, r) the projected Gram matrix of the
    earlier edits' keys (``projected_gram`` summed over them; None for the first edit)."""
    projected = U.mT @ K.to(U.dtype)  # (r, n)
    gram = projected @ projected.mT  # (r, r)
    if earlier is not None:
        gram = gram + earlier.to(gram.dtype)
    solved, conditioning = _spd_solve(gram, alpha, projected, "Uᵀ(KKᵀ + KₚKₚᵀ)U + αI")
    return Factors(R.to(U.dtype), U @ solved), conditioning
