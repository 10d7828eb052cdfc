"""``C⁻¹ k``: the public code's explicit float32 inverse vs a Cholesky factorization and two
triangular solves; once per layer (factor) and once per edit (apply), with the accuracy of
each as ``‖C u − k‖ / ‖k‖``."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import torch

from benchmarks.conftest import synthetic_second_moment
from benchmarks.floors import Peaks, cholesky_floor, floor
from rome_fast.edit.naive import naive_inverse
from rome_fast.methods.rome.update import CovarianceFactor

DIMS = {"tiny": 256, "smollm2": 1536}


def relative_residual(C: torch.Tensor, u: torch.Tensor, k: torch.Tensor) -> float:
    C64, u64, k64 = C.double(), u.double(), k.double()
    return float((C64 @ u64 - k64).norm() / k64.norm())


@pytest.mark.parametrize("dim", list(DIMS))
@pytest.mark.parametrize("impl", ["naive", "fast"])
def test_factor_once_per_layer(
    run_bench: Callable[..., Any], peaks: Peaks, dim: str, impl: str
) -> None:
    d = DIMS[dim]
    C = synthetic_second_moment(d)
    fn = (
        (lambda: naive_inverse(C))
        if impl == "naive"
        else (lambda: CovarianceFactor.from_matrix(C, dtype=torch.float32))
    )
    run_bench(
        fn,
        group=f"C factor {dim} d={d}",
        impl=impl,
        rounds=5,
        floor=cholesky_floor(peaks, d, torch.float32),
        method="torch.inverse" if impl == "naive" else "Cholesky (float32)",
    )


@pytest.mark.parametrize("dim", list(DIMS))
@pytest.mark.parametrize("impl", ["naive", "fast"])
def test_solve_per_edit(run_bench: Callable[..., Any], peaks: Peaks, dim: str, impl: str) -> None:
    d = DIMS[dim]
    C = synthetic_second_moment(d)
    k = torch.randn(d, generator=torch.Generator().manual_seed(1))
    if impl == "naive":
        C_inv = naive_inverse(C)
        solve = partial(torch.matmul, C_inv, k)
        read, method = "C⁻¹ read once", "cached inverse @ k"
    else:
        solve = partial(CovarianceFactor.from_matrix(C, dtype=torch.float32).solve, k)
        read, method = "L read once (2 solves)", "cached Cholesky, two triangular solves"
    u = run_bench(
        solve,
        group=f"C⁻¹k per edit {dim} d={d}",
        impl=impl,
        rounds=50,
        floor=floor(peaks, bytes_moved=4 * d * d, flops=2 * d * d, dtype=torch.float32, basis=read),
        method=method,
    )
    residual = relative_residual(C, u, k)
    assert residual < 1e-2, f"{impl}: ‖C u − k‖/‖k‖ = {residual:.2e}"
