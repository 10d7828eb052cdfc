"""SPEC §2 properties of the three built-in variants, on rome_fast (float64).

Each test states one fact from the maths; the inputs come from ``make_case`` (by construction,
see rome_fast.testing) and failures print a reproducer.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import rome_ref
from rome_fast.methods.rome.update import CovarianceFactor, UpdateInputs, rank_one_update
from rome_fast.methods.rome.variants import get_variant
from rome_fast.testing import Case, CaseParams, make_case
from tests.assertions import assert_close, assert_small, to_numpy, tolerance
from tests.strategies import cases, misaligned_cases, small_cases, variants

F64 = torch.float64


def fast_delta(case: Case, variant: str, **overrides: np.ndarray | None) -> np.ndarray:
    """rome_fast's ΔW (float64 numpy) for ``case`` with some inputs replaced."""
    args = dict(case.torch_args(F64))
    args.update({k: None if v is None else torch.tensor(v) for k, v in overrides.items()})
    bias = args.pop("bias")
    return to_numpy(rank_one_update(**args, variant=variant, bias=bias))  # type: ignore[arg-type]


def call(variant: str) -> str:
    return (
        "t = case.torch_args(torch.float64)\n"
        "delta = rank_one_update(t['W0'], t['C'], t['k_star'], t['k_prompt'], t['v_star'], "
        f"{variant!r}, bias=t['bias'])"
    )


def tol(params: CaseParams) -> float:
    return tolerance(params, F64, F64)


def insertion_residual(case: Case, delta: np.ndarray, key: np.ndarray) -> float:
    """‖(W0 + ΔW) k + b − v*‖ / (‖v*‖ + (‖W0‖ + ‖ΔW‖)‖k‖): relative to the sizes involved."""
    out = (case.W0 + delta) @ key + (0 if case.bias is None else case.bias)
    scale = np.linalg.norm(case.v_star) + (
        np.linalg.norm(case.W0) + np.linalg.norm(delta)
    ) * np.linalg.norm(key)
    return float(np.linalg.norm(out - case.v_star) / scale)


@given(params=cases, variant=variants)
def test_update_has_rank_one(params: CaseParams, variant: str) -> None:
    singular = np.linalg.svd(fast_delta(make_case(params), variant), compute_uv=False)
    assert singular[0] > 0, "ΔW is zero although v* − b − W0 k ≠ 0 by construction"
    second = singular[1] if singular.size > 1 else 0.0
    assert_small(
        second / singular[0], tol(params), params=params, call=call(variant), what="σ₂/σ₁ of ΔW"
    )


@given(params=small_cases)
def test_r_rome_inserts_exactly_at_k_star(params: CaseParams) -> None:
    case = make_case(params)
    residual = insertion_residual(case, fast_delta(case, "r-rome"), case.k_star)
    assert_small(
        residual, tol(params), params=params, call=call("r-rome"), what="relative ‖Ŵk* + b − v*‖"
    )


@given(params=small_cases, variant=st.sampled_from(["rome", "p-rome"]))
def test_prompt_variants_insert_exactly_at_k_prompt(params: CaseParams, variant: str) -> None:
    case = make_case(params)
    residual = insertion_residual(case, fast_delta(case, variant), case.k_prompt)
    assert_small(
        residual, tol(params), params=params, call=call(variant), what="relative ‖Ŵk_s + b − v*‖"
    )


@given(params=misaligned_cases)
def test_original_misses_k_star_when_keys_differ(params: CaseParams) -> None:
    case = make_case(params)  # whitened key angle ≥ 1°
    residual = insertion_residual(case, fast_delta(case, "rome"), case.k_star)
    # the miss is a·(v − W0k_s) − (v − W0k*) with a = ‖z*‖²/(z*ᵀz_s): order one, far above noise
    assert residual > 1e3 * tol(params), (
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
        assert_small(
            abs(miss - expected),
            1e-6 * float(np.linalg.norm(v)) + 1e-6 * expected,
            params=params,
            call=f"# W0, k_prompt from _rotated_prompt_key(case, {angle})",
            what=f"|miss − ‖v‖(1/cos θ − 1)| at θ = {angle}°",
        )
        misses.append(miss)
    assert all(a < b for a, b in itertools.pairwise(misses)), f"not increasing: {misses}"


@given(params=small_cases, variant=variants, log_alpha=st.floats(-3, 3))
def test_scaling_c_leaves_update_unchanged(
    params: CaseParams, variant: str, log_alpha: float
) -> None:
    case = make_case(params)
    alpha = 10**log_alpha
    assert_close(
        fast_delta(case, variant, C=alpha * case.C),
        fast_delta(case, variant),
        rtol=tol(params),
        params=params,
        call=call(variant).replace("t['C']", f"{alpha!r} * t['C']"),
        what=f"ΔW(αC) vs ΔW(C), α = {alpha:.3g}",
    )


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
def test_rescaling_u_leaves_update_unchanged(params: CaseParams, variant: str, s: float) -> None:
    case = make_case(params)
    t = case.torch_args(F64)
    cholesky = CovarianceFactor.from_matrix(t["C"]).cholesky  # type: ignore[arg-type]
    v = t["v_star"] if case.bias is None else t["v_star"] - t["bias"]  # type: ignore[operator]
    variant_fn = get_variant(variant)

    def delta(cov: CovarianceFactor) -> np.ndarray:
        inp = UpdateInputs(t["W0"], cov, t["k_star"], t["k_prompt"], v)  # type: ignore[arg-type]
        return to_numpy(variant_fn(inp).delta())

    assert_close(
        delta(_ScaledSolve(cholesky, s)),
        delta(CovarianceFactor(cholesky)),
        rtol=tol(params),
        params=params,
        call=f"# u scaled by {s!r}",
        what="ΔW with u rescaled",
    )


@given(params=small_cases, variant=variants)
def test_update_vanishes_orthogonally_to_u(params: CaseParams, variant: str) -> None:
    case = make_case(params)
    direction = get_variant(variant).direction_at
    u = rome_ref.update.solve_c(case.C, case.key(direction))
    g = np.random.default_rng([params.seed, 3]).standard_normal(params.d_in)
    j = g - (u @ g) / (u @ u) * u  # uᵀ j = 0
    delta = fast_delta(case, variant)
    leak = float(np.linalg.norm(delta @ j) / (np.linalg.norm(delta) * np.linalg.norm(g)))
    assert_small(
        leak,
        tol(params),
        params=params,
        call=call(variant),
        what=f"‖ΔW j‖ for j ⟂ C⁻¹{direction}",
    )


@given(params=cases)
def test_r_rome_equals_batched_closed_form(params: CaseParams) -> None:
    case = make_case(params)
    closed = rome_ref.batched_closed_form(
        case.W0, case.C, case.k_star[:, None], case.v_star[:, None], bias=case.bias
    )
    assert_close(
        fast_delta(case, "r-rome"),
        closed,
        rtol=tol(params),
        params=params,
        call=call("r-rome"),
        what="r-ROME vs closed form",
    )


def c_norm(delta: np.ndarray, C: np.ndarray) -> float:
    return float(np.trace(delta @ C @ delta.T))


@given(params=st.builds(lambda p: replace(p, d_in=max(p.d_in, 2)), small_cases))
def test_r_rome_minimizes_c_norm_among_insertions(params: CaseParams) -> None:
    case = make_case(params)
    delta = fast_delta(case, "r-rome")
    v = case.v_star if case.bias is None else case.v_star - case.bias
    residual = v - case.W0 @ case.k_star
    u = rome_ref.update.solve_c(case.C, case.k_star)
    minimum = float(residual @ residual / (u @ case.k_star))  # min tr(ΔW C ΔWᵀ) s.t. Ŵk* = v*
    ours = c_norm(delta, case.C)
    assert_small(
        ours - minimum,
        tol(params) * minimum,
        params=params,
        call=call("r-rome"),
        what="tr(ΔW C ΔWᵀ) − minimum",
    )
    # ... and no feasible direction E (E k* = 0, nonzero as d_in ≥ 2) decreases it, to first order
    rng = np.random.default_rng([params.seed, 4])
    k = case.k_star
    for _ in range(3):
        E = rng.standard_normal(delta.shape)
        E -= np.outer(E @ k, k) / (k @ k)
        E *= 1e-3 * np.sqrt(ours / c_norm(E, case.C))
        for step in (E, -E):
            assert c_norm(delta + step, case.C) >= ours, (
                "a feasible perturbation lowers tr(ΔW C ΔWᵀ)"
            )


def _near_orthogonal(params: CaseParams) -> CaseParams:
    return replace(params, d_in=max(params.d_in, 2), angle_deg=0.0)


@settings(max_examples=10)
@given(params=st.builds(_near_orthogonal, small_cases))
@example(params=CaseParams(seed=0, d_in=2, d_out=1, log10_cond=0.0, angle_deg=0.0, with_bias=False))
@example(
    params=CaseParams(seed=7, d_in=64, d_out=32, log10_cond=3.0, angle_deg=0.0, with_bias=True)
)
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
