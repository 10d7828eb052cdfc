"""The edited weight as a (d_out, d_in) matrix, whatever its storage; in-place rank-one edits.

Orientation is decided by the module type, never by the shape (a square weight is ambiguous):
``torch.nn.Linear`` stores (d_out, d_in); transformers' ``Conv1D`` (GPT-2) stores (d_in, d_out).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from rome_fast.solve.low_rank import Factors
from rome_fast.solve.rank_one import RankOne

SUPPORTED = "torch.nn.Linear and transformers.pytorch_utils.Conv1D"


def stores_transposed(module: nn.Module) -> bool:
    """Whether the module stores its weight as (d_in, d_out); refuses unsupported modules."""
    if isinstance(module, Conv1D):
        return True
    if isinstance(module, nn.Linear):
        return False
    raise TypeError(f"cannot edit a {type(module).__name__}: supported modules are {SUPPORTED}")


def weight_matrix(module: nn.Module) -> Tensor:
    """A (d_out, d_in) view of the module's weight (writes through to the parameter)."""
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight.T if stores_transposed(module) else weight


def module_bias(module: nn.Module) -> Tensor | None:
    """The module's output bias (d_out,), or None when it has none."""
    weight_matrix(module)  # type check
    bias = module.bias
    return bias if isinstance(bias, Tensor) else None


def apply_rank_one(module: nn.Module, r: RankOne, *, sign: float = 1.0) -> None:
    """``W += sign · outer(left, right)`` in place, in the weight's dtype.

    When the factors are in the weight's dtype this is one BLAS rank-one update (``addr_``);
    otherwise the outer product is formed in the factors' dtype and rounded once to the
    weight's dtype.
    ``sign=-1`` undoes an edit up to that rounding; restore a saved copy for a bit-exact revert.
    """
    W = weight_matrix(module)
    if r.left.shape != (W.shape[0],) or r.right.shape != (W.shape[1],):
        raise ValueError(
            f"rank-one factors of shapes {tuple(r.left.shape)} and {tuple(r.right.shape)} do not "
            f"fit the (d_out, d_in) = {tuple(W.shape)} weight of this {type(module).__name__}"
        )
    left, right = r.left.to(W.device), r.right.to(W.device)
    with torch.no_grad():
        if left.dtype == W.dtype:
            W.addr_(left, right, alpha=sign)  # BLAS ger: no dense ΔW in memory
        else:
            W.add_((sign * torch.outer(left, right)).to(W.dtype))


def apply_factors(module: nn.Module, factors: Factors, *, sign: float = 1.0) -> None:
    """``W += sign · left @ rightᵀ`` in place, in the weight's dtype (any rank; rank one goes
    through ``apply_rank_one``'s BLAS update).

    The product is formed in the factors' dtype and rounded once to the weight's dtype, as for
    rank one. ``sign=-1`` undoes up to that rounding; restore a saved copy for a bit-exact
    revert.
    """
    W = weight_matrix(module)
    d_out, d_in = W.shape
    if factors.left.shape[0] != d_out or factors.right.shape[0] != d_in:
        raise ValueError(
            f"factors of shapes {tuple(factors.left.shape)} and {tuple(factors.right.shape)} do "
            f"not fit the (d_out, d_in) = {tuple(W.shape)} weight of this {type(module).__name__}"
        )
    if factors.rank == 1:
        one = RankOne(factors.left[:, 0], factors.right[:, 0], torch.ones(()))
        apply_rank_one(module, one, sign=sign)
        return
    left, right = factors.left.to(W.device), factors.right.to(W.device)
    with torch.no_grad():
        if left.dtype == W.dtype:
            W.addmm_(left, right.mT, alpha=sign)  # no dense ΔW in memory beyond the product
        else:
            W.add_((sign * (left @ right.mT)).to(W.dtype))
