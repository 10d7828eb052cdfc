"""The rank-one update: rome_ref (NumPy, float64, factorizes C each call) vs rome_fast (torch,
float32, Cholesky factor cached), and applying it to W: the public code's dense ΔW vs
``apply_rank_one`` vs a BLAS rank-one update (``addr_``), against the bandwidth floor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.conftest import synthetic_second_moment
from benchmarks.floors import Peaks, rank_one_apply_floor, update_factors_floor
from rome_fast.methods.rome.update import CovarianceFactor, RankOne, rank_one_factors
from rome_fast.model.weights import apply_rank_one
from rome_ref.update import rank_one_update as ref_update

# (d_out, d_in) of the edited weights: tiny models, SmolLM2, GPT-2 medium.
SHAPES = {"tiny": (64, 256), "smollm2": (576, 1536), "gpt2-medium": (1024, 4096)}


def inputs(d_out: int, d_in: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "W0": torch.randn(d_out, d_in, generator=g) / d_in**0.5,
        "C": synthetic_second_moment(d_in),
        "k_star": torch.randn(d_in, generator=g),
        "k_prompt": torch.randn(d_in, generator=g),
        "v_star": torch.randn(d_out, generator=g),
    }


@pytest.mark.parametrize("shape", ["tiny", "smollm2"])
@pytest.mark.parametrize("impl", ["ref", "fast"])
def test_update_factors(run_bench: Callable[..., Any], peaks: Peaks, shape: str, impl: str) -> None:
    d_out, d_in = SHAPES[shape]
    x = inputs(d_out, d_in)
    if impl == "ref":
        a = {k: v.double().numpy() for k, v in x.items()}
        run_bench(
            lambda: ref_update(a["W0"], a["C"], a["k_star"], a["k_prompt"], a["v_star"]),
            group=f"update r-rome {shape} {d_out}x{d_in}",
            impl=impl,
            rounds=5,
            dtype="float64 (NumPy)",
            note="factorizes C and forms the dense ΔW each call",
        )
        return
    cov = CovarianceFactor.from_matrix(x["C"], dtype=torch.float32)
    args = (x["W0"], cov, x["k_star"], x["k_prompt"], x["v_star"])
    r: RankOne = run_bench(
        lambda: rank_one_factors(*args, "r-rome"),
        group=f"update r-rome {shape} {d_out}x{d_in}",
        impl=impl,
        rounds=20,
        floor=update_factors_floor(peaks, d_out, d_in, torch.float32),
        dtype="float32",
        note="Cholesky factor cached, returns the factors",
    )
    a = {k: v.double().numpy() for k, v in x.items()}
    expected = ref_update(a["W0"], a["C"], a["k_star"], a["k_prompt"], a["v_star"])
    error = np.linalg.norm(r.delta().double().numpy() - expected) / np.linalg.norm(expected)
    assert error < 1e-3, f"fast ΔW differs from rome_ref by {error:.2e} (relative Frobenius)"


def _apply_naive(W: torch.Tensor, r: RankOne) -> None:
    W += r.left[:, None] @ r.right[None, :]  # the public code: dense ΔW, then add


def _apply_addr(W: torch.Tensor, r: RankOne) -> None:
    W.addr_(r.left, r.right)  # BLAS ger: one pass over W


@pytest.mark.parametrize("shape", ["smollm2", "gpt2-medium"])
@pytest.mark.parametrize("impl", ["naive", "fast", "addr_"])
def test_apply_in_place(run_bench: Callable[..., Any], peaks: Peaks, shape: str, impl: str) -> None:
    d_out, d_in = SHAPES[shape]
    module = torch.nn.Linear(d_in, d_out, bias=False).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    r = RankOne(
        torch.randn(d_out, generator=g) * 1e-6, torch.randn(d_in, generator=g), torch.tensor(1.0)
    )
    W = module.weight
    fns: dict[str, Callable[[], None]] = {
        "naive": lambda: _apply_naive(W, r),
        "fast": lambda: apply_rank_one(module, r),
        "addr_": lambda: _apply_addr(W, r),
    }
    run_bench(
        fns[impl],
        group=f"apply W+=lrᵀ {shape} {d_out}x{d_in}",
        impl=impl,
        rounds=30,
        floor=rank_one_apply_floor(peaks, d_out, d_in, torch.float32),
        dtype="float32",
    )
