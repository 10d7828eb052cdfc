"""What to look at after an edit: the denominator, |Δ|, insertion residuals, key angle;
and the batched closed form that r-ROME must equal for a single edit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from rome_ref.update import Array, insertion_parts, solve_c


@dataclass(frozen=True)
class UpdateDiagnostics:
    """Diagnostics of one rank-one update.

    - ``denominator``: ``u(direction_key)ᵀ insert_key``; near zero or negative for the
      original ROME means a disabling edit.
    - ``delta_norm``: ``‖ΔW‖_F / ΔW.size`` (the paper's normalized update norm |Δ|).
    - ``absolute_residual_k_star``, ``absolute_residual_k_prompt``: ``‖Ŵ k + b − v*‖`` (module
      output).
    - ``relative_residual_*``: the residual divided by ``‖v*‖`` (the desired module output;
      a zero ``v*`` divides by 1 instead, so the value is then the absolute residual).
    - ``key_cosine``: Euclidean cosine between ``k_star`` and ``k_prompt``.
    - ``whitened_key_cosine``: cosine under the C⁻¹ inner product,
      ``k*ᵀC⁻¹k_s / sqrt(k*ᵀC⁻¹k* · k_sᵀC⁻¹k_s)``: the original's denominator, normalized.
    """

    denominator: float
    delta_norm: float
    absolute_residual_k_star: float
    absolute_residual_k_prompt: float
    relative_residual_k_star: float
    relative_residual_k_prompt: float
    key_cosine: float
    whitened_key_cosine: float


def update_diagnostics(
    W0: Array,
    C: Array,
    k_star: Array,
    k_prompt: Array,
    v_star: Array,
    variant: str = "r-rome",
    *,
    bias: Array | None = None,
) -> UpdateDiagnostics:
    """Diagnostics of ``rome_ref.rank_one_update`` with the same arguments."""
    residual, u, denominator = insertion_parts(W0, C, k_star, k_prompt, v_star, variant, bias)
    delta = np.outer(residual, u) / denominator
    W_hat = W0 + delta
    b = np.zeros_like(v_star) if bias is None else bias
    res_star = float(np.linalg.norm(W_hat @ k_star + b - v_star))
    res_prompt = float(np.linalg.norm(W_hat @ k_prompt + b - v_star))
    v_norm = float(np.linalg.norm(v_star)) or 1.0
    u_star, u_prompt = solve_c(C, k_star), solve_c(C, k_prompt)
    return UpdateDiagnostics(
        denominator=denominator,
        delta_norm=float(np.linalg.norm(delta)) / delta.size,
        absolute_residual_k_star=res_star,
        absolute_residual_k_prompt=res_prompt,
        relative_residual_k_star=res_star / v_norm,
        relative_residual_k_prompt=res_prompt / v_norm,
        key_cosine=float(k_star @ k_prompt / (np.linalg.norm(k_star) * np.linalg.norm(k_prompt))),
        whitened_key_cosine=float(
            k_star @ u_prompt / np.sqrt((k_star @ u_star) * (k_prompt @ u_prompt))
        ),
    )


def batched_closed_form(
    W0: Array, C: Array, K: Array, V: Array, *, bias: Array | None = None
) -> Array:
    """``ΔW = (V − b − W0 K)(Kᵀ C⁻¹ K)⁻¹ Kᵀ C⁻¹`` for keys ``K (d_in, n)``, values ``V (d_out, n)``.

    The minimum ``tr(ΔW C ΔWᵀ)`` update with ``(W0 + ΔW) K + b = V`` (the EMMET / MEMIT-style
    batched form). With one column it must equal r-ROME. ``(KᵀC⁻¹K)⁻¹`` is applied by a second
    Cholesky solve (KᵀC⁻¹K is SPD when the keys are independent).
    """
    residual = V - W0 @ K if bias is None else V - bias[:, None] - W0 @ K
    CinvK = cho_solve(cho_factor(C), K)  # (d_in, n)
    gram = K.T @ CinvK  # (n, n)
    # ΔW = R G⁻¹ (C⁻¹K)ᵀ, with G symmetric so R G⁻¹ = (G⁻¹ Rᵀ)ᵀ
    return np.asarray(cho_solve(cho_factor(gram), residual.T).T @ CinvK.T, dtype=np.float64)
