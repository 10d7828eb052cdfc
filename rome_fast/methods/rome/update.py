"""The rank-one update in torch: validated inputs, one variant run, one solve per edit.

Maths as in ``rome_ref.update`` (SPEC §2). Every variant is a function
``fn(UpdateInputs) -> RankOne`` (see ``rome_fast.methods.rome.variants``); the built-ins are
one line over ``insertion_update`` (``rome_fast.solve.rank_one``, re-exported here).
Accumulation happens in float64 when ``W0`` is float64 and in float32 otherwise (bf16/fp16
sums and solves lose the edit); ΔW is returned in ``W0``'s dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rome_fast.methods.rome.variants import variant_entry
from rome_fast.solve.rank_one import (
    CovarianceFactor,
    RankOne,
    UpdateInputs,
    Variant,
    insertion_update,
    require_finite,
)

__all__ = [
    "CovarianceFactor",
    "RankOne",
    "UpdateInputs",
    "Variant",
    "accumulation_dtype",
    "insertion_update",
    "rank_one_factors",
    "rank_one_update",
]


def _require_shape(name: str, x: Tensor, shape: tuple[int, ...], meaning: str) -> None:
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} {meaning}, got {tuple(x.shape)}")


def accumulation_dtype(W0: Tensor, accum_dtype: torch.dtype | None = None) -> torch.dtype:
    """The dtype a variant runs in: ``accum_dtype`` if given, else float64 for a float64 W0
    and float32 otherwise."""
    if accum_dtype is not None:
        return accum_dtype
    return torch.float64 if W0.dtype == torch.float64 else torch.float32


def rank_one_factors(
    W0: Tensor,
    C: Tensor | CovarianceFactor,
    k_star: Tensor,
    k_prompt: Tensor,
    v_star: Tensor,
    variant: str | Variant = "r-rome",
    *,
    bias: Tensor | None = None,
    accum_dtype: torch.dtype | None = None,
) -> RankOne:
    """Validate, cast to the accumulation dtype on W0's device, and run the variant.

    ``W0`` (d_out, d_in) with ``y = W0 @ k (+ b)``; ``C`` the key second moment (d_in, d_in)
    or its ``CovarianceFactor``; ``k_star``, ``k_prompt`` (d_in,); ``v_star`` (d_out,) the
    desired module output; ``bias`` (d_out,) is subtracted from ``v_star`` so it cancels.
    ``variant`` is a registered name or a ``fn(UpdateInputs) -> RankOne``. The factors are
    returned in the accumulation dtype (``accum_dtype``, default float64 for a float64 W0 and
    float32 otherwise).
    """
    if W0.ndim != 2 or not torch.is_floating_point(W0):
        raise ValueError(
            f"W0 must be a floating-point (d_out, d_in) matrix, got shape {tuple(W0.shape)} "
            f"and dtype {W0.dtype}; pass the (d_out, d_in) view from "
            "rome_fast.model.weights.weight_matrix"
        )
    fn = variant_entry(variant)
    d_out, d_in = W0.shape
    orientation = f"for W0 of shape {(d_out, d_in)} (y = W0 @ k)"
    _require_shape("k_star", k_star, (d_in,), orientation)
    _require_shape("k_prompt", k_prompt, (d_in,), orientation)
    _require_shape("v_star", v_star, (d_out,), orientation)
    if bias is not None:
        _require_shape("bias", bias, (d_out,), orientation)
    if isinstance(C, CovarianceFactor):
        if C.d_in != d_in:
            raise ValueError(
                f"the covariance factor has d_in={C.d_in} but W0 has shape {(d_out, d_in)}"
            )
    else:
        _require_shape("C", C, (d_in, d_in), orientation)
    named = {"W0": W0, "k_star": k_star, "k_prompt": k_prompt, "v_star": v_star}
    if bias is not None:
        named["bias"] = bias
    for name, tensor in named.items():
        require_finite(name, tensor)

    dtype = accumulation_dtype(W0, accum_dtype)
    device = W0.device

    def cast(x: Tensor) -> Tensor:
        return x.to(device=device, dtype=dtype)

    cov = (
        C.to(device)
        if isinstance(C, CovarianceFactor)
        else CovarianceFactor.from_matrix(cast(C), dtype=dtype)
    )
    v = cast(v_star) if bias is None else cast(v_star) - cast(bias)
    inp = UpdateInputs(W0=cast(W0), cov=cov, k_star=cast(k_star), k_prompt=cast(k_prompt), v_star=v)
    r = fn(inp)
    if r.left.shape != (d_out,) or r.right.shape != (d_in,):
        raise ValueError(
            f"variant {variant!r} returned factors of shapes {tuple(r.left.shape)} and "
            f"{tuple(r.right.shape)}; expected left ({d_out},) and right ({d_in},)"
        )
    for name, tensor in (("left", r.left), ("right", r.right), ("denominator", r.denominator)):
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(
                f"variant {variant!r} returned a non-finite {name}; the edit would be disabling "
                "(check the keys and the denominator)"
            )
    return r


def rank_one_update(
    W0: Tensor,
    C: Tensor | CovarianceFactor,
    k_star: Tensor,
    k_prompt: Tensor,
    v_star: Tensor,
    variant: str | Variant = "r-rome",
    *,
    bias: Tensor | None = None,
) -> Tensor:
    """ΔW (d_out, d_in) in ``W0``'s dtype and device; see ``rank_one_factors``."""
    r = rank_one_factors(W0, C, k_star, k_prompt, v_star, variant, bias=bias)
    return r.delta().to(W0.dtype)
