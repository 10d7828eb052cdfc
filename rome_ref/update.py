"""The rank-one ROME update, written to be read next to the paper (float64, NumPy/SciPy).

Notation (SPEC §2), code name = paper symbol:

| code       | paper | meaning                                                                 |
|------------|-------|-------------------------------------------------------------------------|
| ``W0``     | W     | the edited module's weight, ``(d_out, d_in)``, ``y = W0 @ k (+ b)``     |
| ``C``      | C     | the uncentered key second moment ``E[k kᵀ]`` (SPD)                      |
| ``k_star`` | k*    | eq. 3: the prefix-averaged key ``k* = (1/N) Σ_i k(x_i ⊕ p)``            |
| ``k_prompt`` | k_s | eq. 4: the bare prompt's key ``k_s = k(p)``                             |
| ``v_star`` | v*    | the desired module *output* (a given ``bias`` b is subtracted: it cancels) |
| ``u(k)``   | C⁻¹k  | the direction ΔW moves W along                                          |

The two equations in full, for the rank-one ΔW with ``Ŵ = W0 + ΔW``:

    eq. 2 (as derived, "r-rome"):
        ΔW = (v* − b − W0 k*) (C⁻¹ k*)ᵀ / ((C⁻¹ k*)ᵀ k*),    so  Ŵ k* + b = v*
    eq. 5 (the original public code, "rome"):
        ΔW = (v* − b − W0 k_s) (C⁻¹ k*)ᵀ / ((C⁻¹ k*)ᵀ k_s),   so  Ŵ k_s + b = v*, Ŵ k* + b ≠ v*

Each variant inserts the value at one key (``insert_key``) and moves the weight only along one
direction (``u(direction_key)``)::

    ΔW = (v* − b − W0 insert_key) u(direction_key)ᵀ / (u(direction_key)ᵀ insert_key)

| variant  | insert_key | direction_key | source                                 |
|----------|------------|---------------|----------------------------------------|
| "rome"   | k_prompt   | k_star        | the original public code (eq. 5)       |
| "r-rome" | k_star     | k_star        | eq. 2 as derived                       |
| "p-rome" | k_prompt   | k_prompt      | prompt key everywhere                  |

``VARIANT_KEYS`` is this table as data; ``rome_fast.methods.rome.variants`` holds the editor's
registry, and a test checks the two equal (this package never imports ``rome_fast``). C⁻¹ is applied
through a Cholesky factorization, never an inverse.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import cho_factor, cho_solve

Array = NDArray[np.float64]

# name: (insert_key, direction_key), the module table
VARIANT_KEYS: dict[str, tuple[str, str]] = {
    "rome": ("k_prompt", "k_star"),
    "r-rome": ("k_star", "k_star"),
    "p-rome": ("k_prompt", "k_prompt"),
}
VARIANTS = tuple(VARIANT_KEYS)


def variant_keys(variant: str, k_star: Array, k_prompt: Array) -> tuple[Array, Array]:
    """Return ``(insert_key, direction_key)`` for a variant name (see the module table)."""
    if variant not in VARIANT_KEYS:
        raise ValueError(f"unknown variant {variant!r}; available: {', '.join(VARIANTS)}")
    keys = {"k_star": k_star, "k_prompt": k_prompt}
    insert_name, direction_name = VARIANT_KEYS[variant]
    return keys[insert_name], keys[direction_name]


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
