"""The precision benchmark's ΔW error: the factored formula equals the dense difference."""

from __future__ import annotations

import pytest
import torch

from benchmarks.precision import factors_error
from rome_fast.solve.low_rank import Factors


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_factors_error_equals_the_dense_relative_difference(scale: float, rank: int) -> None:
    generator = torch.Generator().manual_seed(0)
    a, c = (torch.randn(7, rank, generator=generator) * scale for _ in range(2))
    b, d = (torch.randn(5, rank, generator=generator) for _ in range(2))
    mine, reference = Factors(a, b), Factors(c, d)
    dense_ref = c.double() @ d.double().T
    expected = (a.double() @ b.double().T - dense_ref).norm() / dense_ref.norm()
    assert factors_error(mine, reference) == pytest.approx(float(expected), rel=1e-9)
    assert factors_error(reference, reference) == pytest.approx(0.0, abs=1e-7)
