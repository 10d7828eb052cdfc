"""The property battery for batched solves: check a MEMIT, EMMET or AlphaEdit implementation.

    from rome_fast.testing import check_batched, BatchedMethod
    report = check_batched(BatchedMethod(emmet=my_emmet_solve))
    print(report)             # one row per property: passed / failed / skipped
    report.raise_if_failed()  # for CI

A method is given by the solves it implements, each returning ``Factors`` (ΔW = left rightᵀ):
``memit(C, K, R, lam)``, ``emmet(C, K, R, lam_m, lam_e)``, ``alphaedit(C, K, R, threshold,
alpha, earlier_keys)`` (``earlier_keys`` (d_in, m) or None) and ``schedule(layers, output,
targets)`` (``rome_fast.solve.schedule.spread_over_layers``' signature); a property whose solve
is missing is skipped. Cases are ``BatchParams`` built by ``make_batch`` (well posed by
construction); the weights λ, λₘ, λₑ, α are drawn from the case seed. Errors are compared to
``MARGIN · ε(dtype) · κ``, κ the condition number of the system the property's form solves
(float64 measurements: at most 1.95 ε κ over 400 batches, tests/test_ref_batched.py; float32:
0.06 ε κ(C), docs/results/batched-solve.md), MARGIN = 16.

Properties (κ per method as in rome_ref/batched.py's tests):

- ``finite``: every solve runs and returns finite factors of shapes (d_out, r), (d_in, r).
- ``rank_at_most_n``: r ≤ n and rank(ΔW) ≤ n: never a dense d_out × d_in product.
- ``normal_equations`` (MEMIT): ΔW (λC + KKᵀ) = R Kᵀ, the least-squares optimality.
- ``exact_insertion`` (EMMET, λₑ = 0): ΔW K = R for every fact.
- ``minimality`` (EMMET, λₑ = 0): tr(ΔW C ΔWᵀ) is the minimum over updates inserting the batch.
- ``push_through`` (EMMET): EMMET(λₘ, λₑ) = MEMIT with λ = λₘλₑ (``rome_ref.batched``).
- ``batch_of_one`` (EMMET, λₑ = 0, n = 1): the r-ROME update for the same key and value.
- ``batch_order`` (each solve): permuting the facts permutes nothing in ΔW.
- ``singular_refused`` (EMMET, λₑ = 0): two facts with one key → an error naming both, never NaN.
- ``preserved_keys`` (AlphaEdit, exact null space): ΔW K₀ = 0 for keys K₀ in C's range.
- ``sequential`` (AlphaEdit, α → 0): three batches in a row, the earlier keys passed each
  time; at the end every batch still maps to its values.
- ``schedule_ends_at_targets``, ``schedule_equal_shares`` (schedule, on a toy stack of linear
  layers with exact solves): the last layer leaves H = Z; with keys no edit moves, each layer
  writes (Z − H₀)/L.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis.errors import NoSuchExample
from torch import Tensor

from rome_fast.infra import property_report
from rome_fast.solve.low_rank import Factors
from rome_fast.solve.schedule import ScheduleLayer
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

F64 = np.typing.NDArray[np.float64]
MARGIN = 16


class MemitSolve(Protocol):
    def __call__(self, C: Tensor, K: Tensor, R: Tensor, lam: float) -> Factors: ...


class EmmetSolve(Protocol):
    def __call__(self, C: Tensor, K: Tensor, R: Tensor, lam_m: float, lam_e: float) -> Factors: ...


class AlphaEditSolve(Protocol):
    def __call__(
        self,
        C: Tensor,
        K: Tensor,
        R: Tensor,
        threshold: float,
        alpha: float,
        earlier_keys: Tensor | None,
    ) -> Factors: ...


ScheduleFn = Callable[[Sequence[ScheduleLayer], Callable[[], Tensor], Tensor], list[Factors]]


@dataclass(frozen=True)
class BatchedMethod:
    """The solves of one implementation (any may be None: its properties are skipped)."""

    memit: MemitSolve | None = None
    emmet: EmmetSolve | None = None
    alphaedit: AlphaEditSolve | None = None
    schedule: ScheduleFn | None = None


class PropertyFailure(AssertionError):
    """A property does not hold on a batch."""


def _fail(condition: bool, message: str) -> None:
    if not condition:
        raise PropertyFailure(message)


def _f64(x: Tensor) -> F64:
    return np.asarray(x.detach().to("cpu", torch.float64).numpy(), dtype=np.float64)


def _rel(a: F64, b: F64) -> float:
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), np.finfo(np.float64).tiny))


@dataclass(frozen=True)
class Weights:
    """The regularization weights of one case, drawn from its seed (log-uniform)."""

    lam: float  # MEMIT's λ
    lam_m: float  # EMMET's λₘ
    lam_e: float  # EMMET's λₑ
    alpha: float  # AlphaEdit's α


def weights_for(p: BatchParams) -> Weights:
    rng = np.random.default_rng([p.seed, 2])
    lam, lam_m, lam_e, alpha = 10 ** rng.uniform([-2, -2, -3, -3], [4, 4, 1, 1])
    return Weights(float(lam), float(lam_m), float(lam_e), float(alpha))


@dataclass(frozen=True)
class Run:
    """What is checked, in which dtype; ``delta_*`` run a solve and return ΔW in float64."""

    method: BatchedMethod
    dtype: torch.dtype

    @property
    def eps(self) -> float:
        return float(torch.finfo(self.dtype).eps)

    def t(self, x: F64) -> Tensor:
        return torch.tensor(x, dtype=self.dtype)

    def memit(self, b: Batch, K: F64, R: F64, lam: float) -> Factors:
        assert self.method.memit is not None
        return self.method.memit(self.t(b.C), self.t(K), self.t(R), lam)

    def emmet(self, b: Batch, K: F64, R: F64, lam_m: float, lam_e: float) -> Factors:
        assert self.method.emmet is not None
        return self.method.emmet(self.t(b.C), self.t(K), self.t(R), lam_m, lam_e)

    def alphaedit(
        self, b: Batch, K: F64, R: F64, alpha: float, earlier: F64 | None = None
    ) -> Factors:
        assert self.method.alphaedit is not None
        earlier_keys = None if earlier is None else self.t(earlier)
        threshold = null_threshold(b)
        return self.method.alphaedit(
            self.t(b.C), self.t(K), self.t(R), threshold, alpha, earlier_keys
        )


def null_threshold(b: Batch) -> float:
    """Halfway into C's spectral gap: below it exactly the ``null_dim`` zero eigenvalues."""
    return float(np.linalg.eigvalsh(b.C)[b.params.null_dim]) / 2


def memit_kappa(b: Batch, lam: float) -> float:
    return float(np.linalg.cond(lam * b.C + b.K @ b.K.T))


def emmet_kappa(b: Batch, lam_m: float, lam_e: float) -> float:
    D = b.K.T @ np.linalg.solve(lam_m * b.C, b.K) + lam_e * np.eye(b.params.n)
    return float(np.linalg.cond(b.C) * np.linalg.cond(D))


def alphaedit_kappa(b: Batch, alpha: float) -> float:
    range_eigenvalues = np.linalg.eigvalsh(b.C)[b.params.null_dim :]
    P = b.null_basis @ b.null_basis.T
    M = b.K @ b.K.T @ P + alpha * np.eye(b.params.d_in)
    return float(range_eigenvalues[-1] / range_eigenvalues[0] * np.linalg.cond(M))


# --- the properties -------------------------------------------------------------------------


def _check_factors(name: str, factors: Factors, b: Batch) -> None:
    p = b.params
    shapes = (tuple(factors.left.shape), tuple(factors.right.shape))
    _fail(
        shapes[0][0] == p.d_out and shapes[1][0] == p.d_in,
        f"{name}: factor shapes {shapes}, expected ({p.d_out}, r), ({p.d_in}, r)",
    )
    for part, x in (("left", factors.left), ("right", factors.right)):
        _fail(bool(torch.isfinite(x).all()), f"{name}: {part} factor is not finite")


def spd_batch(p: BatchParams) -> Batch:
    """The case with C positive definite (MEMIT, EMMET): the same draw without a null space."""
    return make_batch(replace(p, null_dim=0))


def _solves(run: Run, p: BatchParams) -> dict[str, tuple[Batch, Factors]]:
    """Each given solve on its batch: (batch, factors) by method name."""
    w, b, nb = weights_for(p), spd_batch(p), make_batch(p)
    out = {}
    if run.method.memit is not None:
        out["memit"] = (b, run.memit(b, b.K, b.residuals(), w.lam))
    if run.method.emmet is not None:
        out["emmet"] = (b, run.emmet(b, b.K, b.residuals(), w.lam_m, w.lam_e))
    if run.method.alphaedit is not None:
        out["alphaedit"] = (nb, run.alphaedit(nb, nb.K, nb.residuals(), w.alpha))
    return out


def prop_finite(run: Run, p: BatchParams) -> None:
    for name, (b, factors) in _solves(run, p).items():
        _check_factors(name, factors, b)


def prop_rank_at_most_n(run: Run, p: BatchParams) -> None:
    n = p.n
    for name, (_, factors) in _solves(run, p).items():
        _fail(factors.rank <= n, f"{name}: {factors.rank} terms for {n} facts (a dense ΔW?)")
        delta = _f64(factors.delta())
        singular = np.linalg.svd(delta, compute_uv=False)
        numerical_rank = int(np.sum(singular > singular[0] * max(delta.shape) * run.eps))
        _fail(numerical_rank <= n, f"{name}: rank(ΔW) = {numerical_rank} > n = {n}")


def prop_normal_equations(run: Run, p: BatchParams) -> None:
    b = spd_batch(p)
    lam = weights_for(b.params).lam
    delta = _f64(run.memit(b, b.K, b.residuals(), lam).delta())
    A = lam * b.C + b.K @ b.K.T
    error = float(np.linalg.norm(delta @ A - b.residuals() @ b.K.T))
    bound = (
        MARGIN * run.eps * memit_kappa(b, lam) * float(np.linalg.norm(delta) * np.linalg.norm(A))
    )
    _fail(error <= bound, f"‖ΔW(λC + KKᵀ) − RKᵀ‖ = {error:.3g} > {bound:.3g} (λ = {lam:.3g})")


def prop_exact_insertion(run: Run, p: BatchParams) -> None:
    b = spd_batch(p)
    lam_m, R = weights_for(b.params).lam_m, b.residuals()
    delta = _f64(run.emmet(b, b.K, R, lam_m, 0.0).delta())
    error = float(np.linalg.norm(delta @ b.K - R))
    scale = float(np.linalg.norm(R) + np.linalg.norm(delta) * np.linalg.norm(b.K))
    bound = MARGIN * run.eps * emmet_kappa(b, lam_m, 0.0) * scale
    _fail(error <= bound, f"λₑ = 0: ‖ΔW K − R‖ = {error:.3g} > {bound:.3g}")


def prop_minimality(run: Run, p: BatchParams) -> None:
    b = spd_batch(p)
    prop_exact_insertion(run, p)
    lam_m, R = weights_for(b.params).lam_m, b.residuals()
    delta = _f64(run.emmet(b, b.K, R, lam_m, 0.0).delta())
    best = rb.emmet_delta(b.C, b.K, R, 1.0, 0.0)
    ours, least = (float(np.trace(d @ b.C @ d.T)) for d in (delta, best))
    bound = (1 + MARGIN * run.eps * emmet_kappa(b, lam_m, 0.0)) * least
    _fail(ours <= bound, f"tr(ΔW C ΔWᵀ) = {ours:.6g} exceeds the minimum {least:.6g}")


def prop_push_through(run: Run, p: BatchParams) -> None:
    b = spd_batch(p)
    w, R = weights_for(b.params), b.residuals()
    delta = _f64(run.emmet(b, b.K, R, w.lam_m, w.lam_e).delta())
    memit = rb.memit_delta(b.C, b.K, R, w.lam_m * w.lam_e)
    error = _rel(delta, memit)
    # the reference MEMIT solves λC + KKᵀ: its own κ bounds its side of the comparison
    kappa = max(emmet_kappa(b, w.lam_m, w.lam_e), memit_kappa(b, w.lam_m * w.lam_e))
    bound = MARGIN * run.eps * kappa
    _fail(
        error <= bound,
        f"EMMET(λₘ = {w.lam_m:.3g}, λₑ = {w.lam_e:.3g}) differs from MEMIT(λ = λₘλₑ) by "
        f"{error:.3g} relative (> {bound:.3g})",
    )


def prop_batch_of_one(run: Run, p: BatchParams) -> None:
    b = spd_batch(p)
    one = make_batch(replace(b.params, n=1, null_dim=0))
    lam_m, k, v = weights_for(one.params).lam_m, one.K[:, 0], one.V[:, 0]
    delta = _f64(run.emmet(one, one.K, one.residuals(), lam_m, 0.0).delta())
    rome = rank_one_update(one.W0, one.C, k, k, v, "r-rome", bias=one.bias)
    error, bound = _rel(delta, rome), MARGIN * run.eps * float(np.linalg.cond(one.C))
    _fail(error <= bound, f"one fact: EMMET differs from r-ROME by {error:.3g} (> {bound:.3g})")


def prop_batch_order(run: Run, p: BatchParams) -> None:
    w = weights_for(p)
    order = np.random.default_rng([p.seed, 3]).permutation(p.n)
    for name, (b, factors) in _solves(run, p).items():
        K, R = b.K[:, order], b.residuals()[:, order]
        if name == "memit":
            permuted, kappa = run.memit(b, K, R, w.lam), memit_kappa(b, w.lam)
        elif name == "emmet":
            permuted, kappa = run.emmet(b, K, R, w.lam_m, w.lam_e), emmet_kappa(b, w.lam_m, w.lam_e)
        else:
            permuted, kappa = run.alphaedit(b, K, R, w.alpha), alphaedit_kappa(b, w.alpha)
        error = _rel(_f64(permuted.delta()), _f64(factors.delta()))
        bound = MARGIN * run.eps * kappa
        _fail(
            error <= bound, f"{name}: permuting the facts changes ΔW by {error:.3g} (> {bound:.3g})"
        )


def prop_singular_refused(run: Run, p: BatchParams) -> None:
    b = spd_batch(p)
    if b.params.n < 2:
        return  # needs two facts; the strategy makes most batches larger
    K = b.K.copy()
    i, j = 0, b.params.n - 1
    K[:, j] = K[:, i]  # fact j: fact i's subject with another target
    try:
        factors = run.emmet(b, K, b.V - b.W0 @ K, weights_for(b.params).lam_m, 0.0)
    except ValueError as error:
        _fail(
            f"facts {i} and {j}" in str(error),
            f"refused, but the message does not name facts {i} and {j}: {error}",
        )
        return
    finite = bool(torch.isfinite(factors.left).all() and torch.isfinite(factors.right).all())
    _fail(
        False,
        f"facts {i} and {j} share a key and λₑ = 0, yet a {'finite' if finite else 'NaN'} "
        "update came back instead of a refusal naming them",
    )


def prop_preserved_keys(run: Run, p: BatchParams) -> None:
    b = make_batch(p)
    alpha = weights_for(b.params).alpha
    delta = _f64(run.alphaedit(b, b.K, b.residuals(), alpha).delta())
    leak = float(np.linalg.norm(delta @ b.preserved))
    bound = (
        MARGIN
        * run.eps
        * alphaedit_kappa(b, alpha)
        * float(np.linalg.norm(delta) * np.linalg.norm(b.preserved))
    )
    _fail(leak <= bound, f"‖ΔW K₀‖ = {leak:.3g} > {bound:.3g} for preserved keys K₀ in C's range")


SEQUENTIAL_MARGIN = 16  # over the measured 1.04 (see prop_sequential)


def prop_sequential(run: Run, p: BatchParams) -> None:
    """On a fixed shape (three batches of three facts, a 12-dimensional null space), with
    α = √ε(dtype): AlphaEdit pins ΔW Kₚ to O(α / σ_min(UᵀK)²); the batches' relative errors
    at their keys, over that, measured at most 1.04 over 60 seeds in float64 and float32."""
    fixed = make_batch(BatchParams(p.seed, 16, 6, 9, 1.0, 0.3, null_dim=12, with_bias=False))
    alpha = math.sqrt(run.eps)
    W = fixed.W0.copy()
    for edit in range(3):
        K, V = fixed.K[:, 3 * edit : 3 * edit + 3], fixed.V[:, 3 * edit : 3 * edit + 3]
        earlier = fixed.K[:, : 3 * edit] if edit else None
        W = W + _f64(run.alphaedit(fixed, K, V - W @ K, alpha, earlier).delta())
    errors = [
        _rel(W @ fixed.K[:, 3 * e : 3 * e + 3], fixed.V[:, 3 * e : 3 * e + 3]) for e in range(3)
    ]
    smallest = float(np.linalg.svd(fixed.null_basis.T @ fixed.K, compute_uv=False)[-1])
    bound = SEQUENTIAL_MARGIN * alpha / smallest**2
    _fail(
        max(errors) <= bound,
        "after three sequential batches, each batch's relative error at its keys is "
        f"{', '.join(f'{e:.3g}' for e in errors)} (> {bound:.3g}): earlier edits moved",
    )


def _toy_layers(
    run: Run, stack_seed: int, keys_from_input: bool
) -> tuple[list[ScheduleLayer], Callable[[], Tensor], LinearStack]:
    """A toy stack (4 layers, d = 8, d_k = 10, n = 4) as schedule steps with exact solves
    (``rome_ref`` EMMET, C = I, λₑ = 0), the output callable, and the stack."""
    stack = make_stack(stack_seed, 4, d=8, d_k=10, n=4, keys_from_input=keys_from_input)

    def layer(i: int) -> ScheduleLayer:
        def solve(K: Tensor, R: Tensor) -> Factors:
            delta = rb.emmet_delta(np.eye(10), _f64(K), _f64(R), 1.0, 0.0)
            return Factors(run.t(delta), run.t(np.eye(10)))

        def apply(factors: Factors) -> None:
            stack.W[i] = stack.W[i] + _f64(factors.delta())

        return ScheduleLayer(keys=lambda: run.t(stack.keys(i)), solve=solve, apply=apply)

    return [layer(i) for i in range(4)], lambda: run.t(stack.output()), stack


def prop_schedule_ends_at_targets(run: Run, p: BatchParams) -> None:
    assert run.method.schedule is not None
    layers, output, _ = _toy_layers(run, p.seed, keys_from_input=False)
    targets = np.random.default_rng([p.seed, 4]).standard_normal((8, 4))
    run.method.schedule(layers, output, run.t(targets))
    error = _rel(_f64(output()), targets)
    # float64: at most 2.1 ε measured (tests/test_ref_batched.py); 64 ε
    _fail(error <= 4 * MARGIN * run.eps, f"‖H − Z‖/‖Z‖ = {error:.3g} after the schedule")


def prop_schedule_equal_shares(run: Run, p: BatchParams) -> None:
    assert run.method.schedule is not None
    layers, output, stack = _toy_layers(run, p.seed, keys_from_input=True)
    targets = np.random.default_rng([p.seed, 4]).standard_normal((8, 4))
    share = (targets - _f64(output())) / 4
    written = run.method.schedule(layers, output, run.t(targets))
    for i, factors in enumerate(written):
        error = _rel(_f64(factors.delta()) @ stack.keys(i), share)
        # float64: at most 11.3 ε measured; 64 ε
        _fail(error <= 4 * MARGIN * run.eps, f"layer {i} of 4 wrote {error:.3g} off (Z − H₀)/4")


Property = Callable[[Run, BatchParams], None]
# name: (property, the solve it needs: memit, emmet, alphaedit, schedule or any)
PROPERTIES: dict[str, tuple[Property, str]] = {
    "finite": (prop_finite, "any"),
    "rank_at_most_n": (prop_rank_at_most_n, "any"),
    "normal_equations": (prop_normal_equations, "memit"),
    "exact_insertion": (prop_exact_insertion, "emmet"),
    "minimality": (prop_minimality, "emmet"),
    "push_through": (prop_push_through, "emmet"),
    "batch_of_one": (prop_batch_of_one, "emmet"),
    "batch_order": (prop_batch_order, "any"),
    "singular_refused": (prop_singular_refused, "emmet"),
    "preserved_keys": (prop_preserved_keys, "alphaedit"),
    "sequential": (prop_sequential, "alphaedit"),
    "schedule_ends_at_targets": (prop_schedule_ends_at_targets, "schedule"),
    "schedule_equal_shares": (prop_schedule_equal_shares, "schedule"),
}


def _needed(run: Run, solve: str) -> bool:
    """Whether the method gives the solve a property needs ("any": at least one)."""
    given = {
        "memit": run.method.memit,
        "emmet": run.method.emmet,
        "alphaedit": run.method.alphaedit,
        "schedule": run.method.schedule,
    }
    if solve == "any":
        return any(given[name] is not None for name in ("memit", "emmet", "alphaedit"))
    return given[solve] is not None


def run_batched_property(
    name: str, method: BatchedMethod, params: BatchParams, *, dtype: torch.dtype = torch.float64
) -> None:
    """Check one property on one case; raises ``PropertyFailure`` (or the solve's own error)."""
    PROPERTIES[name][0](Run(method, dtype), params)


def _reproducer(name: str, params: BatchParams, dtype: torch.dtype) -> str:
    return (
        "import torch\n"
        "from rome_fast.testing import BatchParams, run_batched_property\n"
        f'run_batched_property("{name}", my_method, {params!r}, dtype={dtype})'
    )


def _describe_failure(run: Run, name: str, params: BatchParams) -> str:
    try:
        PROPERTIES[name][0](run, params)
    except Exception as error:  # the solve's own errors are failures too
        prefix = "" if isinstance(error, PropertyFailure) else f"{type(error).__name__}: "
        return prefix + str(error).splitlines()[0]
    return "flaky: the shrunk case passes on rerun"


BatchPropertyResult = property_report.PropertyResult[BatchParams]


class BatchCheckError(AssertionError):
    """Raised by ``BatchReport.raise_if_failed``."""


@dataclass(frozen=True)
class BatchReport:
    """One row per property and a one-line reproducer per failure (as ``VariantReport``)."""

    name: str
    results: tuple[BatchPropertyResult, ...]
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return property_report.all_passed(self.results)

    @property
    def failed(self) -> tuple[str, ...]:
        return property_report.failed_names(self.results)

    def __str__(self) -> str:
        setting = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        head = f"batched method {self.name} ({setting})"
        return property_report.report_text(head, self.results, lead="reproduce with:\n")

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise BatchCheckError(str(self))


def check_batched(
    method: BatchedMethod,
    *,
    name: str = "method",
    max_examples: int = 40,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    shrink: bool = True,
    only: Sequence[str] | None = None,
) -> BatchReport:
    """Run the battery on the solves ``method`` gives; each property its own seeded search
    (``max_examples`` batches, shrunk to the smallest failing ``BatchParams`` unless
    ``shrink=False``); ``only`` names the properties to run (default: all). Below float64, C's
    condition number is limited to 10²."""
    unknown = sorted(set(only or ()) - set(PROPERTIES))
    if unknown:
        raise ValueError(f"unknown properties {unknown}; available: {', '.join(PROPERTIES)}")
    run = Run(method, dtype)
    strategy = batch_params(
        max_log10_cond=3.0 if dtype == torch.float64 else 2.0, with_null_space=True
    )
    phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]
    config = settings(
        max_examples=max_examples,
        database=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
    )
    results = []
    for prop_name, (prop, solve) in PROPERTIES.items():
        if only is not None and prop_name not in only:
            continue
        if not _needed(run, solve):
            results.append(BatchPropertyResult(prop_name, "skipped", f"no {solve} solve given"))
            continue

        def fails(params: BatchParams, prop: Property = prop) -> bool:
            try:
                prop(run, params)
            except Exception:
                return True
            return False

        try:
            smallest = find(strategy, fails, settings=config, random=random.Random(seed))
        except NoSuchExample:
            results.append(BatchPropertyResult(prop_name, "passed"))
            continue
        results.append(
            BatchPropertyResult(
                prop_name,
                "failed",
                _describe_failure(run, prop_name, smallest),
                smallest,
                _reproducer(prop_name, smallest, dtype),
            )
        )
    return BatchReport(
        name, tuple(results), {"max_examples": max_examples, "seed": seed, "dtype": dtype}
    )
