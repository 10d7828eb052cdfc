"""The NumPy reference against hand-worked and independent (explicit-inverse) formulas."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

import rome_ref
from rome_fast.infra.reproducer import reproducible
from rome_fast.testing import Case, make_case
from tests.assertions import assert_close
from tests.strategies import misaligned_cases, small_cases, variants


def test_hand_worked_example_r_rome() -> None:
    # C = diag(1, 4), k* = (1, 2): u = (1, 0.5), uᵀk* = 2; W0 = 0, v* = (2,) → ΔW = v* uᵀ / 2
    W0 = np.zeros((1, 2))
    C = np.diag([1.0, 4.0])
    k_star = np.array([1.0, 2.0])
    delta = rome_ref.rank_one_update(W0, C, k_star, np.array([1.0, 0.0]), np.array([2.0]))
    np.testing.assert_allclose(delta, [[1.0, 0.5]])


def test_hand_worked_example_original_uses_both_keys() -> None:
    # rome: (v* − W0 k_s) u(k*)ᵀ / (u(k*)ᵀ k_s) with u(k*) = (1, 0.5), k_s = (1, 0): denominator 1
    W0 = np.zeros((1, 2))
    C = np.diag([1.0, 4.0])
    delta = rome_ref.rank_one_update(
        W0, C, np.array([1.0, 2.0]), np.array([1.0, 0.0]), np.array([2.0]), "rome"
    )
    np.testing.assert_allclose(delta, [[2.0, 1.0]])


def explicit_inverse_update(case: Case, variant: str) -> np.ndarray:
    """Independent oracle: the SPEC §2 table with an explicit inverse (fine for a test)."""
    insert, direction = {
        "rome": (case.k_prompt, case.k_star),
        "r-rome": (case.k_star, case.k_star),
        "p-rome": (case.k_prompt, case.k_prompt),
    }[variant]
    u = np.linalg.inv(case.C) @ direction
    v = case.v_star if case.bias is None else case.v_star - case.bias
    return np.outer(v - case.W0 @ insert, u) / (u @ insert)


@given(params=small_cases, variant=variants)
@reproducible
def test_reference_matches_explicit_inverse(params, variant) -> None:  # type: ignore[no-untyped-def]
    case = make_case(params)
    got = rome_ref.rank_one_update(
        case.W0, case.C, case.k_star, case.k_prompt, case.v_star, variant, bias=case.bias
    )
    # explicit inverse loses κ ε; 1e-9 is far above that for κ ≤ 10³
    assert_close(
        got,
        explicit_inverse_update(case, variant),
        rtol=1e-9,
        what="reference vs explicit inverse",
    )


@given(params=small_cases, variant=variants)
@reproducible
def test_diagnostics_are_consistent(params, variant) -> None:  # type: ignore[no-untyped-def]
    case = make_case(params)
    args = (case.W0, case.C, case.k_star, case.k_prompt, case.v_star, variant)
    diag = rome_ref.update_diagnostics(*args, bias=case.bias)
    delta = rome_ref.rank_one_update(*args, bias=case.bias)
    assert diag.delta_norm == pytest.approx(np.linalg.norm(delta) / delta.size)
    insert_key = rome_ref.update.VARIANT_KEYS[variant][0]
    insert_residual = getattr(diag, f"absolute_residual_{insert_key}")
    assert insert_residual <= 1e-9 * (1 + np.linalg.norm(case.v_star))
    v_norm = np.linalg.norm(case.v_star)
    assert diag.relative_residual_k_star == pytest.approx(diag.absolute_residual_k_star / v_norm)
    assert diag.key_cosine == pytest.approx(
        case.k_star @ case.k_prompt / np.linalg.norm(case.k_star) / np.linalg.norm(case.k_prompt)
    )
    # by construction the whitened angle is params.angle_deg (parallel when d_in = 1)
    expected_cos = np.cos(np.radians(params.angle_deg)) if params.d_in > 1 else 1.0
    assert diag.whitened_key_cosine == pytest.approx(expected_cos, abs=1e-9)


@given(params=misaligned_cases)
@reproducible
def test_batched_closed_form_inserts_two_keys(params) -> None:  # type: ignore[no-untyped-def]
    case = make_case(params)  # keys at least 1° apart, so both values can be inserted
    K = np.stack([case.k_star, case.k_prompt], axis=1)
    V = np.stack([case.v_star, -case.v_star], axis=1)
    bias = case.bias if case.bias is not None else np.zeros(params.d_out)
    delta = rome_ref.batched_closed_form(case.W0, case.C, K, V, bias=bias)
    cond = 1 / np.sin(np.radians(params.angle_deg)) ** 2
    assert_close(
        (case.W0 + delta) @ K + bias[:, None],
        V,
        rtol=1e-9 * cond,
        what="batched insertion of two keys",
    )


def test_unknown_variant_lists_the_available_ones() -> None:
    with pytest.raises(
        ValueError, match=r"unknown variant 'memit'; available: rome, r-rome, p-rome"
    ):
        rome_ref.rank_one_update(np.eye(2), np.eye(2), np.ones(2), np.ones(2), np.ones(2), "memit")
