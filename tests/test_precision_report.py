"""The precision benchmark's ΔW error: the rank-one formula equals the dense difference."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from benchmarks.precision import delta_w_error


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_delta_w_error_equals_the_dense_relative_difference(scale: float) -> None:
    generator = torch.Generator().manual_seed(0)
    a, c = (torch.randn(7, generator=generator) * scale for _ in range(2))
    b, d = (torch.randn(5, generator=generator) for _ in range(2))
    result, reference = SimpleNamespace(left=a, right=b), SimpleNamespace(left=c, right=d)
    dense_ref = torch.outer(c.double(), d.double())
    expected = (torch.outer(a.double(), b.double()) - dense_ref).norm() / dense_ref.norm()
    assert delta_w_error(result, reference) == pytest.approx(float(expected), rel=1e-9)  # type: ignore[arg-type]
    assert delta_w_error(reference, reference) == pytest.approx(0.0, abs=1e-7)  # type: ignore[arg-type]
