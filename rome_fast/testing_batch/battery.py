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
construction); the weights λ, λₘ, λₑ, α are drawn from the case seed. Each numeric property
measures a misfit (0 in exact arithmetic, relative to the sizes involved) and passes when it is
at most ``MARGIN`` × its floor on the case: the largest misfit of the float64 reference on
inputs perturbed by ε(dtype) (``PerturbedReference``, two draws; for the schedule, the
reference's schedule ``rome_ref.batched.memit_schedule`` with every key, output and target it
reads perturbed so), never below ε(dtype); the report states value, floor and bound.

Properties:

- ``finite``: every solve runs and returns finite factors of shapes (d_out, r), (d_in, r).
- ``rank_at_most_n``: r ≤ n and rank(ΔW) ≤ n: never a dense d_out × d_in product.
- ``normal_equations`` (MEMIT): ΔW (λC + KKᵀ) = R Kᵀ, the least-squares optimality.
- ``exact_insertion`` (EMMET, λₑ = 0): ΔW K = R for every fact.
- ``minimality`` (EMMET, λₑ = 0): ΔW is the least update in the C-norm inserting the batch.
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
Reading = property_report.Reading
# bound = MARGIN × floor (``measure``). Measured over 200 batches per dtype drawn by the
# battery's strategy (docs/results/batched-solve.md, "Battery bounds"): this package's solves
# reach at most 8× the floor (float32 minimality; 2.2× in float64), the mutant targeting each
# property at least 5.9e4× (float32 sequential, whose floor holds AlphaEdit's own α pinning
# error; 8.2e6× elsewhere); 4 × 8 leaves room for the larger draws of a longer search.
MARGIN = 32.0


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


def _norm(x: F64) -> float:
    return float(np.linalg.norm(x))


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


class Solver(Protocol):
    """The solves a property runs on a batch: the method under test (``Run``) or the
    perturbed reference that measures the floor (``PerturbedReference``)."""

    @property
    def eps(self) -> float: ...  # ε of the dtype checked

    def given(self) -> set[str]: ...

    def t(self, x: F64) -> Tensor: ...  # x as the solver works on it (the dtype's rounding)

    def schedule(
        self, layers: Sequence[ScheduleLayer], output: Callable[[], Tensor], targets: Tensor
    ) -> list[Factors]: ...

    def memit(self, b: Batch, K: F64, R: F64, lam: float) -> Factors: ...

    def emmet(self, b: Batch, K: F64, R: F64, lam_m: float, lam_e: float) -> Factors: ...

    def alphaedit(
        self, b: Batch, K: F64, R: F64, alpha: float, earlier: F64 | None = None
    ) -> Factors: ...


@dataclass(frozen=True)
class Run:
    """What is checked, in which dtype; ``delta_*`` run a solve and return ΔW in float64."""

    method: BatchedMethod
    dtype: torch.dtype

    @property
    def eps(self) -> float:
        return float(torch.finfo(self.dtype).eps)

    def given(self) -> set[str]:
        m = self.method
        solves: dict[str, object] = {"memit": m.memit, "emmet": m.emmet, "alphaedit": m.alphaedit}
        return {name for name, solve in solves.items() if solve is not None}

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

    def schedule(
        self, layers: Sequence[ScheduleLayer], output: Callable[[], Tensor], targets: Tensor
    ) -> list[Factors]:
        assert self.method.schedule is not None
        return self.method.schedule(layers, output, targets)


class PerturbedReference:
    """The floor's computation: ``rome_ref.batched`` (float64) on inputs perturbed entrywise
    by a relative ε(dtype), fresh on every call. A backward-stable solve in ``dtype`` is the
    exact answer to inputs perturbed that much, so its misfits are the size of this one's;
    being the reference, it shares no code with the solves under test."""

    def __init__(self, dtype: torch.dtype, seed: list[int]) -> None:
        self.eps = float(torch.finfo(dtype).eps)
        self.rng = np.random.default_rng(seed)

    def given(self) -> set[str]:
        return {"memit", "emmet", "alphaedit"}

    def _perturbed(self, x: F64) -> F64:
        return x * (1 + self.eps * self.rng.uniform(-1, 1, x.shape))

    def t(self, x: F64) -> Tensor:
        return torch.from_numpy(self._perturbed(x))

    def schedule(
        self, layers: Sequence[ScheduleLayer], output: Callable[[], Tensor], targets: Tensor
    ) -> list[Factors]:
        """``rome_ref.batched.memit_schedule`` over the same layers (the keys, outputs and
        targets they read come through ``t``: perturbed)."""
        reference = [_reference_layer(layer) for layer in layers]
        deltas = rb.memit_schedule(reference, lambda: _f64(output()), _f64(targets))
        return [_dense(delta) for delta in deltas]

    def _symmetric(self, A: F64) -> F64:
        A = self._perturbed(A)
        return (A + A.T) / 2

    def _c(self, b: Batch) -> F64:
        return self._symmetric(b.C)

    def memit(self, b: Batch, K: F64, R: F64, lam: float) -> Factors:
        return _dense(rb.memit_delta(self._c(b), self._perturbed(K), self._perturbed(R), lam))

    def emmet(self, b: Batch, K: F64, R: F64, lam_m: float, lam_e: float) -> Factors:
        K, R = self._perturbed(K), self._perturbed(R)
        return _dense(rb.emmet_delta(self._c(b), K, R, lam_m, lam_e))

    def alphaedit(
        self, b: Batch, K: F64, R: F64, alpha: float, earlier: F64 | None = None
    ) -> Factors:
        P = rb.null_space_projector(self._c(b), null_threshold(b))
        # The Gram KKᵀ an implementation forms in dtype is off by about ε‖K‖², which the
        # solve amplifies by up to ‖KKᵀ‖/α; perturbing K alone moves the Gram only along
        # itself. So the reference also sees an unstructured PSD term G Gᵀ of that size,
        # passed as extra earlier keys (they enter the system as Kₚ Kₚᵀ).
        G = self.rng.standard_normal((K.shape[0], K.shape[0]))
        gram_noise = G * math.sqrt(self.eps) * _norm(K) / _norm(G)
        earlier = (
            gram_noise if earlier is None else np.hstack([self._perturbed(earlier), gram_noise])
        )
        return _dense(rb.alphaedit_delta(P, self._perturbed(K), self._perturbed(R), alpha, earlier))


def _reference_layer(layer: ScheduleLayer) -> rb.ScheduleLayer:
    """A schedule step as the reference's (float64 arrays, ΔW dense)."""

    def solve(K: F64, R: F64) -> F64:
        return _f64(layer.solve(torch.from_numpy(K), torch.from_numpy(R)).delta())

    def apply(delta: F64) -> None:
        layer.apply(_dense(delta))

    return rb.ScheduleLayer(keys=lambda: _f64(layer.keys()), solve=solve, apply=apply)


def _dense(delta: F64) -> Factors:
    """ΔW (d_out, d_in) as factors (ΔW, I): the reference's answers are dense."""
    return Factors(torch.from_numpy(delta), torch.eye(delta.shape[1], dtype=torch.float64))


def null_threshold(b: Batch) -> float:
    """Halfway into C's spectral gap: below it exactly the ``null_dim`` zero eigenvalues."""
    return float(np.linalg.eigvalsh(b.C)[b.params.null_dim]) / 2


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


def _solves(run: Solver, p: BatchParams) -> dict[str, tuple[Batch, Factors]]:
    """Each given solve on its batch: (batch, factors) by method name."""
    w, b, nb = weights_for(p), spd_batch(p), make_batch(p)
    given, out = run.given(), {}
    if "memit" in given:
        out["memit"] = (b, run.memit(b, b.K, b.residuals(), w.lam))
    if "emmet" in given:
        out["emmet"] = (b, run.emmet(b, b.K, b.residuals(), w.lam_m, w.lam_e))
    if "alphaedit" in given:
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


# A misfit: how far a solver's answer is from what a property states on a case (0 in exact
# arithmetic), relative to the sizes involved; by part ("" when the property has one part,
# else the solve's name).
Misfit = Callable[[Solver, BatchParams], dict[str, float]]


def _normal_equations(run: Solver, p: BatchParams) -> dict[str, float]:
    """‖ΔW(λC + KKᵀ) − RKᵀ‖ / (‖ΔW‖ ‖λC + KKᵀ‖)."""
    b = spd_batch(p)
    lam = weights_for(b.params).lam
    delta = _f64(run.memit(b, b.K, b.residuals(), lam).delta())
    A = lam * b.C + b.K @ b.K.T
    error = _norm(delta @ A - b.residuals() @ b.K.T)
    return {"": error / (_norm(delta) * _norm(A))}


def _inserted(run: Solver, b: Batch) -> F64:
    """EMMET's ΔW with λₑ = 0 on the batch (float64)."""
    return _f64(run.emmet(b, b.K, b.residuals(), weights_for(b.params).lam_m, 0.0).delta())


def _exact_insertion(run: Solver, p: BatchParams) -> dict[str, float]:
    """λₑ = 0: ‖ΔW K − R‖ / (‖R‖ + ‖ΔW‖ ‖K‖)."""
    b = spd_batch(p)
    delta, R = _inserted(run, b), b.residuals()
    return {"": _norm(delta @ b.K - R) / (_norm(R) + _norm(delta) * _norm(b.K))}


def _minimality(run: Solver, p: BatchParams) -> dict[str, float]:
    """λₑ = 0: √(tr(E C Eᵀ) / tr(ΔW* C ΔW*ᵀ)), E = ΔW − ΔW*, ΔW* the least update in the
    C-norm inserting the batch (``rome_ref.batched.emmet_delta``): an inserting ΔW's excess
    C-norm; a ΔW that does not insert is as far as it misses."""
    b = spd_batch(p)
    best = rb.emmet_delta(b.C, b.K, b.residuals(), 1.0, 0.0)
    E = _inserted(run, b) - best
    return {"": math.sqrt(float(np.trace(E @ b.C @ E.T) / np.trace(best @ b.C @ best.T)))}


def _push_through(run: Solver, p: BatchParams) -> dict[str, float]:
    """‖EMMET(λₘ, λₑ) − MEMIT(λ = λₘλₑ)‖ / ‖MEMIT‖, MEMIT from ``rome_ref.batched``."""
    b = spd_batch(p)
    w, R = weights_for(b.params), b.residuals()
    delta = _f64(run.emmet(b, b.K, R, w.lam_m, w.lam_e).delta())
    return {"": _rel(delta, rb.memit_delta(b.C, b.K, R, w.lam_m * w.lam_e))}


def _batch_of_one(run: Solver, p: BatchParams) -> dict[str, float]:
    """One fact, λₑ = 0: ‖EMMET − r-ROME‖ / ‖r-ROME‖, r-ROME from ``rome_ref``."""
    one = make_batch(replace(p, n=1, null_dim=0))
    lam_m, k, v = weights_for(one.params).lam_m, one.K[:, 0], one.V[:, 0]
    delta = _f64(run.emmet(one, one.K, one.residuals(), lam_m, 0.0).delta())
    return {"": _rel(delta, rank_one_update(one.W0, one.C, k, k, v, "r-rome", bias=one.bias))}


def _batch_order(run: Solver, p: BatchParams) -> dict[str, float]:
    """Per solve: ‖ΔW(facts permuted) − ΔW‖ / ‖ΔW‖."""
    w = weights_for(p)
    order = np.random.default_rng([p.seed, 3]).permutation(p.n)
    found = {}
    for name, (b, factors) in _solves(run, p).items():
        K, R = b.K[:, order], b.residuals()[:, order]
        if name == "memit":
            permuted = run.memit(b, K, R, w.lam)
        elif name == "emmet":
            permuted = run.emmet(b, K, R, w.lam_m, w.lam_e)
        else:
            permuted = run.alphaedit(b, K, R, w.alpha)
        found[name] = _rel(_f64(permuted.delta()), _f64(factors.delta()))
    return found


def _preserved_keys(run: Solver, p: BatchParams) -> dict[str, float]:
    """‖ΔW K₀‖ / (‖ΔW‖ ‖K₀‖) for keys K₀ in C's range."""
    b = make_batch(p)
    delta = _f64(run.alphaedit(b, b.K, b.residuals(), weights_for(b.params).alpha).delta())
    return {"": _norm(delta @ b.preserved) / (_norm(delta) * _norm(b.preserved))}


# The floor is the largest misfit over this many draws of the perturbed reference.
FLOOR_DRAWS = 2


def measure(misfit: Misfit, run: Run, p: BatchParams) -> dict[str, Reading]:
    """The misfit of the solves under test and its floor on the case, by part: the largest
    misfit of the perturbed reference over ``FLOOR_DRAWS`` draws, never below ε(dtype)."""
    value = misfit(run, p)
    draws = range(FLOOR_DRAWS)
    floors = [misfit(PerturbedReference(run.dtype, [p.seed, 5, d]), p) for d in draws]
    return {
        part: Reading(v, max([run.eps, *(f[part] for f in floors)]), MARGIN)
        for part, v in value.items()
    }


@dataclass(frozen=True)
class NumericProperty:
    """A property whose misfit must stay within MARGIN × its floor on the case."""

    misfit: Misfit
    what: str

    def __call__(self, run: Run, p: BatchParams) -> list[Reading]:
        readings = measure(self.misfit, run, p)
        for part, reading in readings.items():
            _fail(reading.passed, f"{part}{': ' if part else ''}{self.what} = {reading.describe()}")
        return list(readings.values())


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


def _sequential(run: Solver, p: BatchParams) -> dict[str, float]:
    """On a fixed shape (three batches of three facts, a 12-dimensional null space), with
    α = √ε(dtype), three AlphaEdit batches in a row, the earlier keys passed each time: the
    largest relative error of a batch at its keys at the end (AlphaEdit pins ΔW Kₚ only to
    O(α / σ_min(UᵀK)²), a bias the reference's floor carries too)."""
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
    return {"": max(errors)}


def _toy_layers(
    run: Solver, stack_seed: int, keys_from_input: bool
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


def _schedule_ends_at_targets(run: Solver, p: BatchParams) -> dict[str, float]:
    """‖H − Z‖ / ‖Z‖ after the schedule on the toy stack."""
    layers, output, _ = _toy_layers(run, p.seed, keys_from_input=False)
    targets = np.random.default_rng([p.seed, 4]).standard_normal((8, 4))
    run.schedule(layers, output, run.t(targets))
    return {"": _rel(_f64(output()), targets)}


def _schedule_equal_shares(run: Solver, p: BatchParams) -> dict[str, float]:
    """Per layer i of 4, keys no edit moves: ‖ΔWᵢ Kᵢ − (Z − H₀)/4‖ / ‖(Z − H₀)/4‖."""
    layers, output, stack = _toy_layers(run, p.seed, keys_from_input=True)
    targets = np.random.default_rng([p.seed, 4]).standard_normal((8, 4))
    share = (targets - _f64(output())) / 4
    written = run.schedule(layers, output, run.t(targets))
    return {
        f"layer {i} of 4": _rel(_f64(factors.delta()) @ stack.keys(i), share)
        for i, factors in enumerate(written)
    }


# A property raises PropertyFailure when it does not hold; a numeric one returns its readings.
Property = Callable[[Run, BatchParams], list[Reading] | None]
# name: (property, the solve it needs: memit, emmet, alphaedit, schedule or any)
PROPERTIES: dict[str, tuple[Property, str]] = {
    "finite": (prop_finite, "any"),
    "rank_at_most_n": (prop_rank_at_most_n, "any"),
    "normal_equations": (
        NumericProperty(_normal_equations, "‖ΔW(λC + KKᵀ) − RKᵀ‖ / (‖ΔW‖‖λC + KKᵀ‖)"),
        "memit",
    ),
    "exact_insertion": (
        NumericProperty(_exact_insertion, "λₑ = 0: ‖ΔW K − R‖ (relative)"),
        "emmet",
    ),
    "minimality": (
        NumericProperty(
            _minimality, "λₑ = 0: C-norm distance to the least inserting update (relative)"
        ),
        "emmet",
    ),
    "push_through": (
        NumericProperty(_push_through, "‖EMMET(λₘ, λₑ) − MEMIT(λ = λₘλₑ)‖ (relative)"),
        "emmet",
    ),
    "batch_of_one": (
        NumericProperty(_batch_of_one, "one fact: ‖EMMET − r-ROME‖ (relative)"),
        "emmet",
    ),
    "batch_order": (
        NumericProperty(_batch_order, "permuting the facts changes ΔW by (relative)"),
        "any",
    ),
    "singular_refused": (prop_singular_refused, "emmet"),
    "preserved_keys": (
        NumericProperty(_preserved_keys, "‖ΔW K₀‖ / (‖ΔW‖‖K₀‖) for preserved keys K₀ in C's range"),
        "alphaedit",
    ),
    "sequential": (
        NumericProperty(
            _sequential,
            "after three AlphaEdit batches in a row, the worst batch's error at its keys",
        ),
        "alphaedit",
    ),
    "schedule_ends_at_targets": (
        NumericProperty(_schedule_ends_at_targets, "‖H − Z‖/‖Z‖ after the schedule"),
        "schedule",
    ),
    "schedule_equal_shares": (
        NumericProperty(_schedule_equal_shares, "wrote this far off (Z − H₀)/4 (relative)"),
        "schedule",
    ),
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
) -> list[Reading] | None:
    """Check one property on one case and return its readings (None: a property without a
    floor); raises ``PropertyFailure`` (or the solve's own error)."""
    return PROPERTIES[name][0](Run(method, dtype), params)


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

        readings: list[Reading] = []

        def fails(
            params: BatchParams, prop: Property = prop, readings: list[Reading] = readings
        ) -> bool:
            try:
                found = prop(run, params)
            except Exception:
                return True
            readings.extend(found or [])
            return False

        try:
            smallest = find(strategy, fails, settings=config, random=random.Random(seed))
        except NoSuchExample:
            results.append(
                BatchPropertyResult(prop_name, "passed", property_report.worst(readings))
            )
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
