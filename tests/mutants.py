"""Plausible bugs the battery must catch. Each is a near-copy of correct code with one mistake.

- ``VARIANT_MUTANTS``: variants passed off as r-ROME (declared ``inserts_at="k_star"``).
- ``UPDATE_MUTANTS``: whole update rules with ``rank_one_factors``' signature.
- ``APPLY_MUTANTS``: versions of ``apply_rank_one``.
- ``PRECISION_MUTANTS``: r-ROME with an error of the size the old analytic bounds let through
  in float32 (a ΔW off by 0.5%, factors rounded through bfloat16).
- ``CORRECT_ALTERNATIVES``: correct r-ROME computed otherwise than the battery's floor
  computations, which must pass with margin.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from rome_fast.edit.ownership import stored_weight
from rome_fast.methods.rome.update import (
    CovarianceFactor,
    RankOne,
    UpdateInputs,
    insertion_update,
    rank_one_factors,
)
from rome_fast.methods.rome.variants import get_variant
from rome_fast.testing import UpdateFn, variant_update


def asymmetric_keys(inp: UpdateInputs) -> RankOne:
    """The bug the paper found: the original's mixed keys shipped as r-ROME."""
    return insertion_update(inp, inp.k_prompt, inp.k_star)


def sign_flip(inp: UpdateInputs) -> RankOne:
    r = insertion_update(inp, inp.k_star, inp.k_star)
    return RankOne(-r.left, r.right, r.denominator)


def no_c_inverse(inp: UpdateInputs) -> RankOne:
    """u = k instead of C⁻¹ k (a toolkit with the covariance turned off)."""
    u = inp.k_star
    denominator = u @ inp.k_star
    return RankOne((inp.v_star - inp.W0 @ inp.k_star) / denominator, u, denominator)


def wrong_normalizer(inp: UpdateInputs) -> RankOne:
    """r-ROME's numerator over the original's denominator u(k*)ᵀk_prompt."""
    u = inp.cov.solve(inp.k_star)
    denominator = u @ inp.k_prompt
    return RankOne((inp.v_star - inp.W0 @ inp.k_star) / denominator, u, denominator)


def transposed(inp: UpdateInputs) -> RankOne:
    """Left and right swapped: ΔWᵀ, which only fits a square weight."""
    r = insertion_update(inp, inp.k_star, inp.k_star)
    return RankOne(r.right, r.left, r.denominator)


def scaled_update(inp: UpdateInputs) -> RankOne:
    """ΔW off by 0.5% (a stray factor in the numerator)."""
    r = insertion_update(inp, inp.k_star, inp.k_star)
    return RankOne(0.995 * r.left, r.right, r.denominator)


def bf16_factors(inp: UpdateInputs) -> RankOne:
    """The factors rounded through bfloat16 (an update computed in low precision)."""
    r = insertion_update(inp, inp.k_star, inp.k_star)
    dtype = r.left.dtype
    return RankOne(r.left.bfloat16().to(dtype), r.right.bfloat16().to(dtype), r.denominator)


def unit_u(inp: UpdateInputs) -> RankOne:
    """The public code's form: u normalized to unit length, the scale moved to the left."""
    r = insertion_update(inp, inp.k_star, inp.k_star)
    scale = torch.linalg.norm(r.right)
    return RankOne(r.left * scale, r.right / scale, r.denominator)


def lu_solve(inp: UpdateInputs) -> RankOne:
    """u = C⁻¹k* by an LU solve of C = L Lᵀ rebuilt from the factor (no triangular solves)."""
    L = inp.cov.cholesky
    u = torch.linalg.solve(L @ L.T, inp.k_star)
    denominator = u @ inp.k_star
    return RankOne((inp.v_star - inp.W0 @ inp.k_star) / denominator, u, denominator)


PRECISION_MUTANTS: dict[str, Callable[[UpdateInputs], RankOne]] = {
    "scaled_update": scaled_update,
    "bf16_factors": bf16_factors,
}

CORRECT_ALTERNATIVES: dict[str, Callable[[UpdateInputs], RankOne]] = {
    "unit_u": unit_u,
    "lu_solve": lu_solve,
}

VARIANT_MUTANTS: dict[str, Callable[[UpdateInputs], RankOne]] = {
    "asymmetric_keys": asymmetric_keys,
    "sign_flip": sign_flip,
    "no_c_inverse": no_c_inverse,
    "wrong_normalizer": wrong_normalizer,
    "transposed": transposed,
}


def bias_ignored(
    W0: Tensor,
    C: Tensor | CovarianceFactor,
    k_star: Tensor,
    k_prompt: Tensor,
    v_star: Tensor,
    *,
    bias: Tensor | None = None,  # noqa: ARG001  (ignoring it is this mutant's bug)
) -> RankOne:
    """Forgets to subtract the bias: the bias no longer cancels."""
    return rank_one_factors(W0, C, k_star, k_prompt, v_star, "r-rome")


def bias_added(
    W0: Tensor,
    C: Tensor | CovarianceFactor,
    k_star: Tensor,
    k_prompt: Tensor,
    v_star: Tensor,
    *,
    bias: Tensor | None = None,
) -> RankOne:
    """Adds the bias where it should subtract it."""
    v = v_star if bias is None else v_star + 2 * bias
    return rank_one_factors(W0, C, k_star, k_prompt, v, "r-rome", bias=bias)


UPDATE_MUTANTS: dict[str, UpdateFn] = {
    **{name: variant_update(fn) for name, fn in VARIANT_MUTANTS.items()},
    **{name: variant_update(fn) for name, fn in PRECISION_MUTANTS.items()},
    "bias_ignored": bias_ignored,
    "bias_added": bias_added,
}

CORRECT_UPDATE: UpdateFn = variant_update(get_variant("r-rome"))


def apply_conv1d_as_linear(module: nn.Module, r: RankOne, *, sign: float = 1.0) -> None:
    """Treats every module's stored weight as (d_out, d_in): wrong for Conv1D."""
    with torch.no_grad():
        W = stored_weight(module)
        W.add_((sign * r.delta()).to(W.dtype))


def apply_by_shape(module: nn.Module, r: RankOne, *, sign: float = 1.0) -> None:
    """Decides orientation from the shape: transposes whenever the shape matches ΔWᵀ."""
    W = stored_weight(module)
    delta = sign * r.delta()
    with torch.no_grad():
        W.add_((delta if W.shape == delta.shape else delta.T).to(W.dtype))


APPLY_MUTANTS = {"conv1d_as_linear": apply_conv1d_as_linear, "orientation_by_shape": apply_by_shape}
