"""The batched closed forms of MEMIT, EMMET and AlphaEdit, written to be read (float64, SPEC §7).

Notation, code name = paper symbol:

| code    | paper | meaning                                                                  |
|---------|-------|--------------------------------------------------------------------------|
| ``W0``  | W0    | the edited module's weight ``(d_out, d_in)``, ``y = W0 @ k (+ b)``       |
| ``C``   | C     | the uncentered key second moment ``E[k kᵀ]`` (SPD), ``(d_in, d_in)``     |
| ``K``   | K     | one key per fact, as columns: ``(d_in, n)``                              |
| ``V``   | V     | the desired module outputs, one column per fact: ``(d_out, n)``          |
| ``R``   | R     | the residuals ``R = V − b − W0 K`` (``residuals``), ``(d_out, n)``       |
| ``K_p`` | Kₚ    | AlphaEdit: the keys of earlier edits of a sequential run, ``(d_in, m)``  |

The updates, all of rank ≤ n, with ``Ŵ = W0 + ΔW``:

    MEMIT (one layer):  ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹                 least squares: ΔW (λC + KKᵀ) = R Kᵀ
    EMMET:              ΔW = R (Kᵀ C'⁻¹ K + λₑ I)⁻¹ Kᵀ C'⁻¹,  C' = λₘ C + λᵤ I
                        (λₑ = 0: Ŵ K = V exactly, the minimum tr(ΔW C ΔWᵀ) among inserting updates)
    AlphaEdit:          ΔW = R Kᵀ P ((K Kᵀ + Kₚ Kₚᵀ) P + α I)⁻¹,  P = U Uᵀ,
                        U the eigenvectors of C with eigenvalue below the threshold

Push-through: (KᵀA⁻¹K + λₑI)⁻¹KᵀA⁻¹ = Kᵀ(KKᵀ + λₑA)⁻¹, so EMMET(λₘ, λₑ, λᵤ = 0) is MEMIT with
λ = λₘλₑ. The MEMIT multi-layer schedule (``memit_schedule``) spreads the residual of the target
over the edited layers. Every SPD system is solved by Cholesky, never an inverse.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_factor, cho_solve, eigh

from rome_ref.update import Array


class SingularBatchError(ValueError):
    """A batch whose keys make the solve singular (e.g. two facts with the same subject)."""


def residuals(W0: Array, K: Array, V: Array, bias: Array | None = None) -> Array:
    """``R = V − b − W0 K`` (d_out, n): what the update must add at each fact's key."""
    return V - W0 @ K if bias is None else V - bias[:, None] - W0 @ K


def _spd_solve(A: Array, B: Array) -> Array:
    """``A⁻¹ B`` for a symmetric positive definite ``A`` (Cholesky)."""
    return np.asarray(cho_solve(cho_factor(A), B), dtype=np.float64)


def most_collinear_pair(gram: Array) -> tuple[int, int, float]:
    """The two facts whose keys are closest to parallel under the Gram matrix ``gram`` (n, n):
    ``(i, j, cosine)`` with ``cosine = gram_ij / sqrt(gram_ii gram_jj)``, the largest |cosine|."""
    scale = np.sqrt(np.clip(np.diag(gram), np.finfo(np.float64).tiny, None))
    cosine = gram / np.outer(scale, scale)
    np.fill_diagonal(cosine, 0.0)
    i, j = np.unravel_index(int(np.argmax(np.abs(cosine))), cosine.shape)
    return int(min(i, j)), int(max(i, j)), float(cosine[i, j])


def require_nonsingular(gram: Array, what: str) -> None:
    """Refuse a numerically singular SPD matrix ``gram`` (n, n), naming the two facts at fault.

    Singular means the smallest eigenvalue is at most ``n ε λ_max`` (the numerical rank test):
    below it the solve returns rounding noise, not an update.
    """
    eigenvalues = np.linalg.eigvalsh(gram)
    n = gram.shape[0]
    if eigenvalues[0] > n * np.finfo(np.float64).eps * eigenvalues[-1]:
        return
    spectrum = f"smallest eigenvalue {eigenvalues[0]:.3g}, largest {eigenvalues[-1]:.3g}"
    if n == 1:
        raise SingularBatchError(f"{what} is singular ({spectrum}): fact 0 has a zero key")
    i, j, cosine = most_collinear_pair(gram)
    raise SingularBatchError(
        f"{what} is singular ({spectrum}): the facts' keys are linearly dependent, facts {i} "
        f"and {j} most of all (cosine {cosine:.6f}; 1 means the same subject with two targets); "
        "drop one of them, or regularize with emmet_lambda > 0"
    )


def memit_delta(C: Array, K: Array, R: Array, lam: float) -> Array:
    """MEMIT at one layer: ``ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹`` (d_out, d_in).

    The least-squares update: it minimizes ``‖ΔW K − R‖² + λ tr(ΔW C ΔWᵀ)``, so it satisfies
    the normal equations ``ΔW (λC + KKᵀ) = R Kᵀ``. λ = ``mom2_update_weight``.
    """
    A = lam * C + K @ K.T  # (d_in, d_in), SPD for λ > 0
    # ΔW = R (A⁻¹ K)ᵀ since A is symmetric
    return R @ _spd_solve(A, K).T


def emmet_delta(
    C: Array, K: Array, R: Array, lam_m: float, lam_e: float, lam_u: float = 0.0
) -> Array:
    """EMMET: ``ΔW = R D⁻¹ Kᵀ C'⁻¹`` with ``C' = λₘ C + λᵤ I`` and ``D = Kᵀ C'⁻¹ K + λₑ I``.

    λₘ = ``mom2_update_weight``, λₑ = ``emmet_lambda``, λᵤ = ``update_norm_lambda``. With
    λₑ = 0 it inserts every fact exactly (``ΔW K = R``). Raises ``SingularBatchError`` naming
    two facts when D is singular (the public code falls back to a pseudo-inverse there).
    """
    C_prime = lam_m * C + lam_u * np.eye(C.shape[0])
    CinvK = _spd_solve(C_prime, K)  # C'⁻¹ K, (d_in, n)
    D = K.T @ CinvK + lam_e * np.eye(K.shape[1])  # (n, n)
    require_nonsingular(D, "EMMET's D = KᵀC'⁻¹K + λₑI")
    # ΔW = R D⁻¹ (C'⁻¹K)ᵀ with D symmetric
    return _spd_solve(D, R.T).T @ CinvK.T


def null_space_projector(C: Array, threshold: float) -> Array:
    """AlphaEdit's ``P = U Uᵀ`` (d_in, d_in), U the eigenvectors of C with eigenvalue < threshold.

    C is PSD here (it may have an exact null space), so no Cholesky: a symmetric eigensolver.
    """
    eigenvalues, eigenvectors = eigh(C)
    U = eigenvectors[:, eigenvalues < threshold]  # (d_in, r)
    return np.asarray(U @ U.T, dtype=np.float64)


def alphaedit_delta(P: Array, K: Array, R: Array, alpha: float, K_p: Array | None = None) -> Array:
    """AlphaEdit: ``ΔW = R Kᵀ P ((K Kᵀ + Kₚ Kₚᵀ) P + α I)⁻¹`` (d_out, d_in).

    ``P`` the null-space projector (``null_space_projector``), α = ``L2``, ``K_p`` the keys of
    the earlier edits of a sequential run (None: the first edit). ΔW = ΔW P: it leaves every
    key in P's complement (the preserved keys) unchanged. The system is not symmetric: LU solve.
    """
    d_in = K.shape[0]
    earlier = np.zeros((d_in, d_in)) if K_p is None else K_p @ K_p.T
    M = (K @ K.T + earlier) @ P + alpha * np.eye(d_in)  # (d_in, d_in)
    # ΔW M = R Kᵀ P  ⇔  Mᵀ ΔWᵀ = P K Rᵀ
    return np.asarray(np.linalg.solve(M.T, P @ K @ R.T).T, dtype=np.float64)


def memit_update(
    W0: Array, C: Array, K: Array, V: Array, lam: float, *, bias: Array | None = None
) -> Array:
    """``memit_delta`` for desired outputs ``V`` (d_out, n): ``R = V − b − W0 K``."""
    return memit_delta(C, K, residuals(W0, K, V, bias), lam)


def emmet_update(
    W0: Array,
    C: Array,
    K: Array,
    V: Array,
    lam_m: float,
    lam_e: float,
    lam_u: float = 0.0,
    *,
    bias: Array | None = None,
) -> Array:
    """``emmet_delta`` for desired outputs ``V`` (d_out, n): ``R = V − b − W0 K``."""
    return emmet_delta(C, K, residuals(W0, K, V, bias), lam_m, lam_e, lam_u)


# --- the MEMIT schedule over several layers -------------------------------------------------


@dataclass(frozen=True)
class ScheduleLayer:
    """One edited layer of the schedule, as callables on a model the caller owns.

    ``keys()``: this layer's keys K (d_in, n) on the current (partly edited) weights;
    ``solve(K, R)``: ΔW for residuals R (d_out, n), e.g. ``memit_delta`` with this layer's C;
    ``apply(ΔW)``: add ΔW to this layer's weight.
    """

    keys: Callable[[], Array]
    solve: Callable[[Array, Array], Array]
    apply: Callable[[Array], None]


def memit_schedule(
    layers: Sequence[ScheduleLayer], output: Callable[[], Array], targets: Array
) -> list[Array]:
    """MEMIT's multi-layer edit: returns the ΔW written at each layer, in order.

    For layer i of L: K_i = keys at layer i on the current weights; R_i = (Z − H) / (L − i),
    with Z the ``targets`` (d, n) and H = ``output()`` the hidden state at the last edited
    layer on the current weights; ΔW_i = solve(K_i, R_i), applied before the next layer.
    If every solve inserts exactly and the keys of a layer do not move with earlier edits,
    each layer writes Rᵢ = (Z − H₀)/L; the last layer writes what is left, so an exact last
    solve ends at H = Z.
    """
    deltas = []
    for i, layer in enumerate(layers):
        K = layer.keys()
        R = (targets - output()) / (len(layers) - i)
        delta = layer.solve(K, R)
        layer.apply(delta)
        deltas.append(delta)
    return deltas
