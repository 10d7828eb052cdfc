"""The fast-vs-reference comparisons on CUDA, with TF32 off and on."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

from rome_fast.edit.editor import Editor
from rome_fast.edit.request import EditRequest
from rome_fast.model.loader import random_model
from rome_fast.testing import CaseParams
from tests.assertions import assert_matches_reference
from tests.models import REQUEST, TEMPLATES, key_dim, tiny_hparams
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


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_edit_on_cuda_in_each_loop_precision(precision: str) -> None:
    """Any v* precision still inserts v* exactly at k* (the update stays float32)."""
    loaded = random_model("tiny-gpt2", device="cuda")
    hp = tiny_hparams("tiny-gpt2", v_precision=precision)
    d_in = key_dim(loaded, hp.layer)
    editor = Editor(loaded, hparams=hp, stats=torch.eye(d_in), templates=TEMPLATES)
    result = editor.edit(EditRequest(*REQUEST), "r-rome")
    assert result.relative_residual_k_star < 1e-4
    assert all(torch.isfinite(torch.tensor(result.loss_trace)))
