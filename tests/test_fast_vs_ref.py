"""rome_fast against rome_ref on well-posed inputs, per dtype (tolerances: tests/assertions.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

from rome_fast.methods.rome.update import CovarianceFactor, rank_one_update
from rome_fast.testing import CaseParams, make_case
from tests.assertions import assert_matches_reference as compare
from tests.strategies import cases, low_precision_cases, variants


@given(params=cases, variant=variants)
def test_float64_matches_reference(params: CaseParams, variant: str) -> None:
    compare(params, variant, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@given(params=low_precision_cases, variant=variants)
def test_low_precision_matches_reference(
    dtype: torch.dtype, params: CaseParams, variant: str
) -> None:
    compare(params, variant, dtype)


@given(params=cases, variant=variants)
def test_reused_covariance_factor_gives_the_same_update(params: CaseParams, variant: str) -> None:
    case = make_case(params)
    t = case.torch_args(torch.float64)
    W0, C, k_star, k_prompt, v_star = t["W0"], t["C"], t["k_star"], t["k_prompt"], t["v_star"]
    factor = CovarianceFactor.from_matrix(C)
    from_factor = rank_one_update(W0, factor, k_star, k_prompt, v_star, variant, bias=t["bias"])
    from_matrix = rank_one_update(W0, C, k_star, k_prompt, v_star, variant, bias=t["bias"])
    assert torch.equal(from_factor, from_matrix)
