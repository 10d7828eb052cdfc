"""The exact relations among rome_ref's batched closed forms (SPEC §7), in float64.

Tolerances: ``MARGIN · ε · κ`` with κ the condition number of the system each form solves
(κ(λC + KKᵀ) for MEMIT, κ(C')·κ(D) for EMMET, κ(C on its range)·κ(M) for AlphaEdit's
preserved keys). Measured on 400 random batches of these strategies (d ≤ 40), the largest
ratio error / (ε κ) was 1.95 (push-through), 1.15 (normal equations), 1.4 (batch order),
0.65 (EMMET insertion), 0.72 (AlphaEdit's preserved keys): MARGIN = 16 leaves 8× headroom.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rome_fast.testing_batch.cases import (
    Batch,
    BatchParams,
    LinearStack,
    batch_params,
    make_batch,
    make_stack,
)
from rome_ref import batched as rb
from rome_ref.update import rank_one_update

EPS = float(np.finfo(np.float64).eps)
MARGIN = 16
batches = batch_params(max_dim=20)
null_space_batches = batch_params(max_dim=20, with_null_space=True)
weights = st.floats(-2.0, 4.0).map(lambda x: 10**x)  # λ, λₘ over six decades
emmet_lambdas = st.floats(-3.0, 1.0).map(lambda x: 10**x)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def emmet_kappa(b: Batch, lam_m: float, lam_e: float) -> float:
    D = b.K.T @ np.linalg.solve(lam_m * b.C, b.K) + lam_e * np.eye(b.params.n)
    return float(np.linalg.cond(b.C) * np.linalg.cond(D))


@settings(max_examples=60, deadline=None)
@given(batches, weights, emmet_lambdas)
def test_emmet_is_memit_with_the_product_of_lambdas(
    p: BatchParams, lam_m: float, lam_e: float
) -> None:
    b = make_batch(p)
    R = b.residuals()
    emmet = rb.emmet_delta(b.C, b.K, R, lam_m, lam_e)
    memit = rb.memit_delta(b.C, b.K, R, lam_m * lam_e)
    kappa = float(np.linalg.cond(lam_m * lam_e * b.C + b.K @ b.K.T))
    assert rel(emmet, memit) <= MARGIN * EPS * kappa


@settings(max_examples=60, deadline=None)
@given(batches, weights)
def test_memit_solves_its_normal_equations(p: BatchParams, lam: float) -> None:
    b = make_batch(p)
    R = b.residuals()
    delta = rb.memit_update(b.W0, b.C, b.K, b.V, lam, bias=b.bias)
    A = lam * b.C + b.K @ b.K.T
    error = np.linalg.norm(delta @ A - R @ b.K.T)
    assert error <= MARGIN * EPS * np.linalg.norm(delta) * np.linalg.norm(A)


@settings(max_examples=60, deadline=None)
@given(batches, weights)
def test_emmet_without_lambda_inserts_every_fact(p: BatchParams, lam_m: float) -> None:
    b = make_batch(p)
    delta = rb.emmet_update(b.W0, b.C, b.K, b.V, lam_m, 0.0, bias=b.bias)
    shift = 0 if b.bias is None else b.bias[:, None]
    error = np.linalg.norm((b.W0 + delta) @ b.K + shift - b.V)
    scale = np.linalg.norm(b.residuals()) + np.linalg.norm(delta) * np.linalg.norm(b.K)
    assert error <= MARGIN * EPS * emmet_kappa(b, lam_m, 0.0) * scale


@settings(max_examples=60, deadline=None)
@given(batches, weights)
def test_one_fact_without_lambda_is_r_rome(p: BatchParams, lam_m: float) -> None:
    b = make_batch(replace(p, n=1))
    k, v = b.K[:, 0], b.V[:, 0]
    emmet = rb.emmet_update(b.W0, b.C, b.K, b.V, lam_m, 0.0, bias=b.bias)
    rome = rank_one_update(b.W0, b.C, k, k, v, "r-rome", bias=b.bias)
    assert rel(emmet, rome) <= MARGIN * EPS * float(np.linalg.cond(b.C))


@pytest.mark.parametrize("decades", [2, 4, 6])
def test_memit_inserts_exactly_as_lambda_goes_to_zero(decades: int) -> None:
    """ΔW K − R = −λ R (D + λI)⁻¹ with D = KᵀC⁻¹K: the insertion error is at most
    λ / (λ_min(D) + λ) ‖R‖, which vanishes with λ (n ≤ d_in)."""
    b = make_batch(
        BatchParams(
            7, d_in=12, d_out=9, n=8, log10_cond=2.0, log10_key_cond=0.5, null_dim=0, with_bias=True
        )
    )
    R = b.residuals()
    smallest = float(np.linalg.eigvalsh(b.K.T @ np.linalg.solve(b.C, b.K))[0])
    lam = smallest * 10.0**-decades
    delta = rb.memit_delta(b.C, b.K, R, lam)
    error = float(np.linalg.norm(delta @ b.K - R))
    floor = (
        MARGIN
        * EPS
        * float(np.linalg.cond(lam * b.C + b.K @ b.K.T))
        * float(np.linalg.norm(delta) * np.linalg.norm(b.K))
    )
    assert error <= lam / (smallest + lam) * float(np.linalg.norm(R)) + floor
    assert error <= 10.0 ** (1 - decades) * float(np.linalg.norm(R))


@settings(max_examples=40, deadline=None)
@given(batches, weights, emmet_lambdas)
def test_memit_and_emmet_ignore_the_order_of_the_batch(
    p: BatchParams, lam_m: float, lam_e: float
) -> None:
    b = make_batch(p)
    order = np.random.default_rng(p.seed + 1).permutation(p.n)
    R = b.residuals()
    memit_kappa = float(np.linalg.cond(lam_m * b.C + b.K @ b.K.T))
    memit = rb.memit_delta(b.C, b.K, R, lam_m)
    memit_permuted = rb.memit_delta(b.C, b.K[:, order], R[:, order], lam_m)
    assert rel(memit_permuted, memit) <= MARGIN * EPS * memit_kappa
    emmet = rb.emmet_delta(b.C, b.K, R, lam_m, lam_e)
    emmet_permuted = rb.emmet_delta(b.C, b.K[:, order], R[:, order], lam_m, lam_e)
    assert rel(emmet_permuted, emmet) <= MARGIN * EPS * emmet_kappa(b, lam_m, lam_e)


def alphaedit_case(p: BatchParams, alpha: float) -> tuple[Batch, np.ndarray, np.ndarray, float]:
    """The batch, P from a threshold halfway into C's spectral gap, ΔW, and the κ of the bound."""
    b = make_batch(p)
    range_eigenvalues = np.linalg.eigvalsh(b.C)[p.null_dim :]
    P = rb.null_space_projector(b.C, float(range_eigenvalues[0]) / 2)
    delta = rb.alphaedit_delta(P, b.K, b.residuals(), alpha)
    M = b.K @ b.K.T @ P + alpha * np.eye(p.d_in)
    kappa = float(range_eigenvalues[-1] / range_eigenvalues[0] * np.linalg.cond(M))
    return b, P, delta, kappa


@settings(max_examples=60, deadline=None)
@given(null_space_batches, emmet_lambdas)
def test_alphaedit_leaves_preserved_keys_alone(p: BatchParams, alpha: float) -> None:
    b, P, delta, kappa = alphaedit_case(p, alpha)
    assert np.linalg.matrix_rank(P) == p.null_dim
    leak = float(np.linalg.norm(delta @ b.preserved))
    assert leak <= MARGIN * EPS * kappa * float(np.linalg.norm(delta) * np.linalg.norm(b.preserved))


@settings(max_examples=40, deadline=None)
@given(null_space_batches, emmet_lambdas)
def test_alphaedit_ignores_the_order_of_the_batch(p: BatchParams, alpha: float) -> None:
    b, P, delta, kappa = alphaedit_case(p, alpha)
    order = np.random.default_rng(p.seed + 1).permutation(p.n)
    permuted = rb.alphaedit_delta(P, b.K[:, order], b.residuals()[:, order], alpha)
    assert rel(permuted, delta) <= MARGIN * EPS * kappa


def alphaedit_sequential_run(*, keep_earlier: bool) -> float:
    """Three batches of three facts in a row, with α = 1e-9 small against the keys, Kₚ the
    earlier batches' keys or none: the relative misfit of every fact at the end."""
    b = make_batch(
        BatchParams(
            3,
            d_in=16,
            d_out=6,
            n=9,
            log10_cond=1.0,
            log10_key_cond=0.3,
            null_dim=12,
            with_bias=False,
        )
    )
    P = rb.null_space_projector(b.C, float(np.linalg.eigvalsh(b.C)[b.params.null_dim]) / 2)
    W = b.W0.copy()
    for edit in range(3):
        K, V = b.K[:, 3 * edit : 3 * edit + 3], b.V[:, 3 * edit : 3 * edit + 3]
        earlier = b.K[:, : 3 * edit] if edit and keep_earlier else None
        W = W + rb.alphaedit_delta(P, K, V - W @ K, 1e-9, earlier)
    return rel(W @ b.K, b.V)


def test_alphaedit_keeps_earlier_edits_of_a_sequential_run() -> None:
    """With Kₚ accumulated every batch still maps to its values at the end (AlphaEdit's
    objective pins ΔW Kₚ to 0 as α → 0)."""
    # the pinned error is O(α / σ_min(UᵀK)²) = 3.3e-8 here (σ_min = 0.175), measured 2.2e-8;
    # 1e-6 is a 30× margin over the bound
    assert alphaedit_sequential_run(keep_earlier=True) <= 1e-6


def test_alphaedit_forgets_earlier_edits_without_their_keys() -> None:
    """The same run without Kₚ overwrites the earlier batches: the test above can fail."""
    assert alphaedit_sequential_run(keep_earlier=False) > 1e-2


def test_emmet_refuses_one_subject_with_two_targets() -> None:
    b = make_batch(
        BatchParams(
            5,
            d_in=10,
            d_out=7,
            n=5,
            log10_cond=1.0,
            log10_key_cond=0.3,
            null_dim=0,
            with_bias=False,
        )
    )
    K = b.K.copy()
    K[:, 3] = K[:, 1]  # fact 3 has fact 1's subject, with another target
    with pytest.raises(rb.SingularBatchError, match="facts 1 and 3"):
        rb.emmet_update(b.W0, b.C, K, b.V, 1e4, 0.0)
    assert np.isfinite(rb.emmet_update(b.W0, b.C, K, b.V, 1e4, 0.1)).all()


def exact_schedule(stack: LinearStack) -> list[rb.ScheduleLayer]:
    """Each layer solved by EMMET with λₑ = 0 (exact insertion, C = I) on the toy stack."""

    def layer(i: int) -> rb.ScheduleLayer:
        def apply(delta: np.ndarray) -> None:
            stack.W[i] = stack.W[i] + delta

        identity = np.eye(stack.A[i].shape[0])
        return rb.ScheduleLayer(
            keys=lambda: stack.keys(i),
            solve=lambda K, R: rb.emmet_delta(identity, K, R, 1.0, 0.0),
            apply=apply,
        )

    return [layer(i) for i in range(len(stack.A))]


@pytest.mark.parametrize("layers", [1, 2, 5])
def test_schedule_ends_at_the_targets(layers: int) -> None:
    stack = make_stack(layers, layers, d=8, d_k=10, n=4, keys_from_input=False)
    targets = np.random.default_rng(0).standard_normal((8, 4))
    rb.memit_schedule(exact_schedule(stack), stack.output, targets)
    # measured: at most 2.1 ε relative (1, 2, 5 layers); 64 ε: a 30× margin
    assert rel(stack.output(), targets) <= 64 * EPS


def test_schedule_writes_an_equal_share_per_layer_when_keys_stay_put() -> None:
    """Keys that no edit moves: layer i writes (Z − H₀)/L, every layer the same share."""
    stack = make_stack(1, 4, d=8, d_k=10, n=4, keys_from_input=True)
    targets = np.random.default_rng(0).standard_normal((8, 4))
    share = (targets - stack.output()) / 4
    deltas = rb.memit_schedule(exact_schedule(stack), stack.output, targets)
    for i, delta in enumerate(deltas):  # measured: at most 11.3 ε; 64 ε: a 5.7× margin
        assert rel(delta @ stack.keys(i), share) <= 64 * EPS
