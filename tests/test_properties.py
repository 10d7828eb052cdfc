"""Facts about the three built-in variants that the property battery does not state.

The battery (``rome_fast.testing``, run on every built-in by tests/test_check_variant.py)
checks what any rank-one update must satisfy: finite rank-one factors, exact insertion at
the registered key, invariance to scaling C, no change orthogonal to C⁻¹d, minimality,
bias cancellation, the denominator. Here: what tells the built-ins apart (the original
misses k*, by how much, and blows up as the keys turn orthogonal; r-ROME is the batched
closed form; rescaling u changes nothing), with the analytic tolerance model
(``tests.assertions.analytic_tolerance``). The inputs come from ``make_case``; each failure
carries a reproducer.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

import rome_ref
from rome_fast.infra.reproducer import reproducible
from rome_fast.methods.rome.update import CovarianceFactor, UpdateInputs, rank_one_update
from rome_fast.methods.rome.variants import get_variant
from rome_fast.testing import Case, CaseParams, make_case
from tests.assertions import analytic_tolerance, assert_small, to_numpy
from tests.strategies import cases, misaligned_cases, small_cases, variants

F64 = torch.float64


def fast_delta(
    case: Case,
    variant: str,
    *,
    W0: NDArray[np.float64] | None = None,
    k_prompt: NDArray[np.float64] | None = None,
) -> np.ndarray:
    """rome_fast's ΔW (float64 numpy) for ``case``, optionally with another W0 or k_prompt."""
    changed = replace(
        case,
        W0=case.W0 if W0 is None else W0,
        k_prompt=case.k_prompt if k_prompt is None else k_prompt,
    )
    return to_numpy(rank_one_update(**changed.torch_args(F64), variant=variant))


def tol(case: Case) -> float:
    """The analytic float64 tolerance on ``case`` (``tests.assertions.analytic_tolerance``)."""
    return analytic_tolerance(case, F64)


def insertion_residual(case: Case, delta: np.ndarray, key: np.ndarray) -> float:
    """‖(W0 + ΔW) k + b − v*‖ / (‖v*‖ + (‖W0‖ + ‖ΔW‖)‖k‖): relative to the sizes involved."""
    out = (case.W0 + delta) @ key + (0 if case.bias is None else case.bias)
    scale = np.linalg.norm(case.v_star) + (
        np.linalg.norm(case.W0) + np.linalg.norm(delta)
    ) * np.linalg.norm(key)
    return float(np.linalg.norm(out - case.v_star) / scale)


@given(params=misaligned_cases)
@reproducible
def test_original_misses_k_star_when_keys_differ(params: CaseParams) -> None:
    case = make_case(params)  # whitened key angle ≥ 1°
    residual = insertion_residual(case, fast_delta(case, "rome"), case.k_star)
    # the miss is a·(v − W0k_s) − (v − W0k*) with a = ‖z*‖²/(z*ᵀz_s): order one, far above noise
    assert residual > 1e3 * tol(case), (
        f"the original ROME inserted at k* (relative residual {residual:.3g}) with keys "
        f"{params.angle_deg:.1f}° apart; it should only insert at k_prompt"
    )


def _rotated_prompt_key(case: Case, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """``(W0', k_s(θ))`` with k_s at whitened angle θ from k*, the same whitened norm, and
    W0' = W0 with the rotation direction removed (W0' k⊥ = 0). Then the original's miss at k*
    is exactly ‖v* − b‖ (1/cos θ − 1)."""
    L = np.linalg.cholesky(case.C)
    z_star = np.linalg.solve(L, case.k_star)
    w = np.random.default_rng([case.params.seed, 2]).standard_normal(z_star.size)
    w -= (w @ z_star) / (z_star @ z_star) * z_star
    k_perp = L @ (w / np.linalg.norm(w) * np.linalg.norm(z_star))
    W0 = case.W0 - np.outer(case.W0 @ k_perp, k_perp) / (k_perp @ k_perp)
    theta = math.radians(angle_deg)
    return W0, math.cos(theta) * case.k_star + math.sin(theta) * k_perp


@given(params=st.builds(lambda p: replace(p, d_in=max(p.d_in, 2)), small_cases))
@reproducible
def test_original_k_star_miss_grows_with_the_key_angle(params: CaseParams) -> None:
    case = make_case(params)
    v = case.v_star if case.bias is None else case.v_star - case.bias
    angles = [0.0, 10.0, 30.0, 50.0, 70.0, 80.0]
    misses = []
    for angle in angles:
        W0, k_prompt = _rotated_prompt_key(case, angle)
        delta = fast_delta(case, "rome", W0=W0, k_prompt=k_prompt)
        miss = float(np.linalg.norm((W0 + delta) @ case.k_star - v))
        expected = float(np.linalg.norm(v)) * (1 / math.cos(math.radians(angle)) - 1)
        # Measured over 400 random cases × these angles: at most 0.02 of the analytic tol
        # (3.6e-14 relative); the analytic tol leaves a margin of 50.
        assert_small(
            abs(miss - expected),
            tol(case) * (float(np.linalg.norm(v)) + expected),
            what=f"|miss − ‖v‖(1/cos θ − 1)| at θ = {angle}°",
        )
        misses.append(miss)
    assert all(a < b for a, b in itertools.pairwise(misses)), f"not increasing: {misses}"


class _ScaledSolve(CovarianceFactor):
    """A factor whose ``solve`` returns ``s · C⁻¹ k``: rescales u without touching C."""

    def __init__(self, cholesky: torch.Tensor, s: float) -> None:
        super().__init__(cholesky)
        self.s = s

    def solve(self, k: torch.Tensor) -> torch.Tensor:
        return self.s * super().solve(k)


@given(
    params=small_cases,
    variant=variants,
    s=st.one_of(st.floats(1e-3, 1e3), st.floats(-1e3, -1e-3)),
)
@reproducible
def test_rescaling_u_leaves_update_unchanged(params: CaseParams, variant: str, s: float) -> None:
    case = make_case(params)
    t = case.torch_args(F64)
    cholesky = CovarianceFactor.from_matrix(t["C"]).cholesky
    v = t["v_star"] if t["bias"] is None else t["v_star"] - t["bias"]
    variant_fn = get_variant(variant)

    def delta(cov: CovarianceFactor) -> np.ndarray:
        inp = UpdateInputs(t["W0"], cov, t["k_star"], t["k_prompt"], v)
        return to_numpy(variant_fn(inp).delta())

    unscaled = delta(CovarianceFactor(cholesky))
    difference = float(np.linalg.norm(delta(_ScaledSolve(cholesky, s)) - unscaled))
    # As the battery's invariances; measured over 300 cases: at most 0.004 of this bound.
    bound = tol(case) * float(np.linalg.norm(unscaled))
    assert_small(difference, bound, what=f"‖ΔW(s·u) − ΔW(u)‖ for s = {s:.3g}")


@given(params=cases)
@reproducible
def test_r_rome_equals_batched_closed_form(params: CaseParams) -> None:
    case = make_case(params)
    closed = rome_ref.batched_closed_form(
        case.W0, case.C, case.k_star[:, None], case.v_star[:, None], bias=case.bias
    )
    difference = float(np.linalg.norm(fast_delta(case, "r-rome") - closed))
    # As the battery's invariances; measured over 300 cases (dims to 200): at most 0.006 of it.
    bound = tol(case) * float(np.linalg.norm(closed))
    assert_small(difference, bound, what="‖ΔW_r-ROME − ΔW_closed form‖")


def _near_orthogonal(params: CaseParams) -> CaseParams:
    return replace(params, d_in=max(params.d_in, 2), angle_deg=0.0)


@settings(max_examples=10)
@given(params=st.builds(_near_orthogonal, small_cases))
@example(params=CaseParams(seed=0, d_in=2, d_out=1, log10_cond=0.0, angle_deg=0.0, with_bias=False))
@example(
    params=CaseParams(seed=7, d_in=64, d_out=32, log10_cond=3.0, angle_deg=0.0, with_bias=True)
)
@reproducible
def test_original_blows_up_as_keys_turn_orthogonal_while_r_rome_stays_put(
    params: CaseParams,
) -> None:
    """cos θ_w = k*ᵀC⁻¹k_s / (‖z*‖‖z_s‖) → 0: rome's ‖ΔW‖ ∝ 1/cos θ_w; r-ROME ignores k_s."""
    norms: dict[str, list[float]] = {name: [] for name in rome_ref.VARIANTS}
    cosines = [10.0**-j for j in range(2, 8)]
    for cos in cosines:
        case = make_case(replace(params, angle_deg=math.degrees(math.acos(cos))))
        for name in rome_ref.VARIANTS:
            norms[name].append(float(np.linalg.norm(fast_delta(case, name))))
    growth = [b / a for a, b in zip(norms["rome"], norms["rome"][1:], strict=False)]
    # k_s barely moves within 0.6° of 90°, so each tenfold drop of cos θ_w multiplies ‖ΔW‖ by ≈ 10
    assert all(5 < g < 20 for g in growth), f"rome ‖ΔW‖ over cos θ_w = {cosines}: {norms['rome']}"
    assert max(norms["r-rome"]) == min(norms["r-rome"]), f"r-ROME depends on k_s: {norms['r-rome']}"
    assert max(norms["p-rome"]) <= 2 * min(norms["p-rome"]), (
        f"p-ROME not bounded: {norms['p-rome']}"
    )
