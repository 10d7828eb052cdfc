"""The fast-vs-reference comparisons on CUDA, with TF32 off and on."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

from rome_fast.testing import CaseParams
from tests.assertions import assert_matches_reference
from tests.strategies import low_precision_cases, variants

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(params=[False, True], ids=["tf32-off", "tf32-on"])
def tf32(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = request.param
    yield request.param
    torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@given(params=low_precision_cases, variant=variants)
def test_cuda_matches_reference(
    tf32: bool, dtype: torch.dtype, params: CaseParams, variant: str
) -> None:
    assert_matches_reference(params, variant, dtype, "cuda", tf32=tf32 and dtype == torch.float32)
