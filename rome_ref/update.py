"""The rank-one ROME update, written to be read next to the paper (float64, NumPy/SciPy).

Notation (SPEC §2): ``W0`` is ``(d_out, d_in)`` with ``y = W0 @ k (+ b)``; ``C`` is the
uncentered key second moment (SPD); ``u(k) = C⁻¹ k``. Each variant inserts the value at one
key (``insert_key``) and moves the weight only along one direction (``u(direction_key)``)::

    ΔW = (v* − b − W0 insert_key) u(direction_key)ᵀ / (u(direction_key)ᵀ insert_key)

| variant  | insert_key | direction_key | source                                 |
|----------|------------|---------------|----------------------------------------|
| "rome"   | k_prompt   | k_star        | the original public code (eq. 5)       |
| "r-rome" | k_star     | k_star        | eq. 2 as derived                       |
| "p-rome" | k_prompt   | k_prompt      | prompt key everywhere                  |

``v_star`` is the desired module *output*; a given ``bias`` is subtracted so that it cancels,
as in the public code. C⁻¹ is applied through a Cholesky factorization, never an inverse.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import cho_factor, cho_solve

Array = NDArray[np.float64]

VARIANTS = ("rome", "r-rome", "p-rome")


def variant_keys(variant: str, k_star: Array, k_prompt: Array) -> tuple[Array, Array]:
    """Return ``(insert_key, direction_key)`` for a variant name (see the module table)."""
    if variant == "rome":
        return k_prompt, k_star
    if variant == "r-rome":
        return k_star, k_star
    if variant == "p-rome":
        return k_prompt, k_prompt
    raise ValueError(f"unknown variant {variant!r}; available: {', '.join(VARIANTS)}")


def solve_c(C: Array, k: Array) -> Array:
    """``C⁻¹ k`` by Cholesky factorization (raises LinAlgError if C is not positive definite)."""
    return np.asarray(cho_solve(cho_factor(C), k), dtype=np.float64)


def insertion_parts(
    W0: Array,
    C: Array,
    k_star: Array,
    k_prompt: Array,
    v_star: Array,
    variant: str,
    bias: Array | None,
) -> tuple[Array, Array, float]:
    """The three pieces of the update: ``(residual, u, denominator)``.

    ``residual = v* − b − W0 insert_key`` (d_out,), ``u = C⁻¹ direction_key`` (d_in,),
    ``denominator = uᵀ insert_key``; ``ΔW = residual uᵀ / denominator``.
    """
    insert_key, direction_key = variant_keys(variant, k_star, k_prompt)
    v = v_star if bias is None else v_star - bias
    residual = v - W0 @ insert_key
    u = solve_c(C, direction_key)
    return residual, u, float(u @ insert_key)


def rank_one_update(
    W0: Array,
    C: Array,
    k_star: Array,
    k_prompt: Array,
    v_star: Array,
    variant: str = "r-rome",
    *,
    bias: Array | None = None,
) -> Array:
    """ΔW of the given variant, shape of ``W0``; ``W0 + ΔW`` maps the insert key to ``v_star``."""
    residual, u, denominator = insertion_parts(W0, C, k_star, k_prompt, v_star, variant, bias)
    return np.outer(residual, u) / denominator
