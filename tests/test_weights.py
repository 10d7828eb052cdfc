"""The (d_out, d_in) view and in-place edits, decided by module type (never by shape)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from rome_fast.methods.rome.update import RankOne
from rome_fast.model.weights import apply_factors, apply_rank_one, module_bias, weight_matrix
from rome_fast.solve.low_rank import Factors


def make_module(kind: str, d_out: int, d_in: int, dtype: torch.dtype) -> Conv1D | nn.Linear:
    torch.manual_seed(0)
    module: Conv1D | nn.Linear = Conv1D(d_out, d_in) if kind == "conv1d" else nn.Linear(d_in, d_out)
    nn.init.normal_(module.weight)
    return module.to(dtype)


def random_rank_one(d_out: int, d_in: int) -> RankOne:
    g = torch.Generator().manual_seed(1)
    return RankOne(
        torch.randn(d_out, generator=g), torch.randn(d_in, generator=g), torch.tensor(1.0)
    )


def assert_output_moves_by_delta(module: nn.Module, r: RankOne, apply=apply_rank_one) -> None:  # type: ignore[no-untyped-def]
    """Property: after the edit, module(k) − module_before(k) = ΔW k for every input k."""
    d_out, d_in = r.left.numel(), r.right.numel()
    dtype = next(module.parameters()).dtype
    k = torch.randn(5, d_in).to(dtype)
    with torch.no_grad():
        before = module(k).float()
        apply(module, r)
        after = module(k).float()
    expected = k.float() @ r.delta().T  # (5, d_out)
    tol = 3 * torch.finfo(dtype).eps * (before.abs().max() + expected.abs().max()) * d_in
    err = (after - before - expected).abs().max()
    assert err <= tol, (
        f"output moved by something other than ΔW k (error {float(err):.3g} > {float(tol):.3g}) "
        f"for {d_out}x{d_in}"
    )


@pytest.mark.parametrize("kind", ["conv1d", "linear"])
@pytest.mark.parametrize(("d_out", "d_in"), [(3, 5), (4, 4)])  # (4, 4): shape cannot decide
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_edit_changes_output_by_delta_k(
    kind: str, d_out: int, d_in: int, dtype: torch.dtype
) -> None:
    module = make_module(kind, d_out, d_in, dtype)
    assert tuple(weight_matrix(module).shape) == (d_out, d_in)
    assert_output_moves_by_delta(module, random_rank_one(d_out, d_in))
    assert module.weight.dtype == dtype


@pytest.mark.parametrize("kind", ["conv1d", "linear"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_negative_sign_reverts(kind: str, dtype: torch.dtype) -> None:
    module = make_module(kind, 4, 4, dtype)
    original = module.weight.detach().clone()
    r = random_rank_one(4, 4)
    apply_rank_one(module, r)
    assert not torch.equal(module.weight, original)
    apply_rank_one(module, r, sign=-1.0)
    # exact up to the two roundings to the weight's dtype (bit-exact revert needs a saved copy)
    ulp = torch.finfo(dtype).eps * (original.abs() + r.delta().abs().to(dtype))
    assert ((module.weight - original).abs() <= 2 * ulp).all()


def test_weight_matrix_is_a_view_of_the_parameter() -> None:
    module = make_module("conv1d", 3, 5, torch.float32)
    with torch.no_grad():
        weight_matrix(module)[1, 2] = 7.0
    assert module.weight[2, 1] == 7.0  # Conv1D stores (d_in, d_out)


def test_module_bias() -> None:
    assert module_bias(nn.Linear(2, 3, bias=False)) is None
    linear = nn.Linear(2, 3)
    assert module_bias(linear) is linear.bias


def test_unsupported_module_names_the_supported_ones() -> None:
    with pytest.raises(
        TypeError,
        match=r"cannot edit a Conv2d: supported modules are torch.nn.Linear and transformers",
    ):
        weight_matrix(nn.Conv2d(2, 3, 1))


def test_factors_that_do_not_fit_are_rejected() -> None:
    module = make_module("linear", 3, 5, torch.float32)
    with pytest.raises(
        ValueError, match=r"do not fit the \(d_out, d_in\) = \(3, 5\) weight of this Linear"
    ):
        apply_rank_one(module, random_rank_one(5, 3))


@pytest.mark.parametrize("kind", ["conv1d", "linear"])
@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_factors_of_any_rank_move_the_output_by_delta_k(
    kind: str, rank: int, dtype: torch.dtype
) -> None:
    """Property: after ``apply_factors``, module(k) − module_before(k) = (left rightᵀ) k."""
    d_out, d_in = 4, 6
    module = make_module(kind, d_out, d_in, dtype)
    g = torch.Generator().manual_seed(2)
    factors = Factors(torch.randn(d_out, rank, generator=g), torch.randn(d_in, rank, generator=g))
    k = torch.randn(5, d_in, generator=g).to(dtype)
    with torch.no_grad():
        before = module(k).float()
        apply_factors(module, factors)
        after = module(k).float()
    expected = k.float() @ factors.delta().T  # (5, d_out)
    # The bound of assert_output_moves_by_delta: a few roundings to the weight's dtype per term.
    tol = 3 * torch.finfo(dtype).eps * (before.abs().max() + expected.abs().max()) * d_in * rank
    assert (after - before - expected).abs().max() <= tol
    assert module.weight.dtype == dtype


def test_factors_that_do_not_fit_the_module_are_refused() -> None:
    module = make_module("linear", 4, 6, torch.float32)
    with pytest.raises(ValueError, match=r"\(d_out, d_in\) = \(4, 6\)"):
        apply_factors(module, Factors(torch.zeros(6, 2), torch.zeros(4, 2)))
