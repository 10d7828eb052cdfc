"""A property battery for rank-one update rules: check your own variant before you trust it.

    from rome_fast.testing import check_variant
    report = check_variant(my_variant, inserts_at="k_star")
    print(report)            # one row per property: passed / failed / skipped
    report.raise_if_failed() # for CI

Inputs are built by construction from a ``CaseParams`` (seed, shapes, condition number of C,
angle between the keys under the C⁻¹ inner product, bias or not), so a failure is reported
as the smallest ``CaseParams`` hypothesis could shrink to and a reproducer: Python that
repeats the failing ``run_property`` call in a fresh interpreter (``rome_fast.infra.reproducer``).

For a variant declared to insert at key ``k`` (``inserts_at``) and to move W along
``u = C⁻¹ d`` with ``d`` the ``direction_at`` key (default: the same key), the properties are
below. Each numeric one measures a misfit (0 in exact arithmetic, relative to the sizes
involved, in float64 from the returned factors) and passes when it is at most ``MARGIN`` × its
floor on the case: the largest misfit that correct computations of the same keys reach there
in the same dtype (``BuiltinInsertion``: C⁻¹ by triangular solves and by an explicit inverse),
never below ε(dtype). The report states value, floor and bound (a passed row: its worst case).

- ``finite``: the variant runs and returns finite factors of shapes (d_out,), (d_in,).
- ``rank_one``: ΔW = outer(left, right) is nonzero (the inputs make v* − b − W0 k ≠ 0), i.e.
  rank exactly one, with the factors in (d_out, d_in) orientation.
- ``exact_insertion``: ‖(W0 + ΔW) k + b − v*‖ relative to ‖v*‖ + (‖W0‖ + ‖ΔW‖) ‖k‖.
- ``scale_invariance``: ΔW(α C) = ΔW(C) for an α in [10⁻³, 10³] (relative to ‖ΔW‖).
- ``null_space``: ΔW j = 0 for j = P g, g random and P the projection onto u(d)^⟂ (so
  u(d)ᵀ j = 0), i.e. the row space of ΔW is spanned by C⁻¹ d (relative to ‖ΔW‖ ‖g‖).
- ``minimality`` (only when direction_at == inserts_at; skipped otherwise): ΔW = ΔW*, the
  batched closed form ``rome_ref.batched_closed_form`` with K = [k], the unique minimizer of
  tr(ΔW C ΔWᵀ) among inserting updates (the C-norm distance, relative to ΔW*'s).
- ``bias_cancellation``: ΔW(v*, bias=b) = ΔW(v* − b, bias=None) for a random b.
- ``denominator``: the reported denominator is finite and equals u(d)ᵀ k.

A last row, ``misses_<other key>`` (status ``noted``, never a failure), measures what the
variant does at the key it does not promise, on one fixed case with the keys 30° apart: the
original ROME inserts at k_prompt along C⁻¹k* and misses k* (the r-ROME paper's finding).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol, TypedDict

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

import rome_ref
from rome_fast.infra import property_report
from rome_fast.infra.reproducer import reproducer_note, reproducible
from rome_fast.methods.rome.update import (
    CovarianceFactor,
    RankOne,
    Variant,
    accumulation_dtype,
    rank_one_factors,
)
from rome_fast.methods.rome.variants import KEY_NAMES, Insertion, KeyName, RegisteredVariant
from rome_fast.solve.explicit_inverse import ExplicitInverse
from rome_fast.testing_batch.battery import BatchedMethod as BatchedMethod
from rome_fast.testing_batch.battery import BatchReport as BatchReport
from rome_fast.testing_batch.battery import check_batched as check_batched
from rome_fast.testing_batch.battery import run_batched_property as run_batched_property
from rome_fast.testing_batch.cases import BatchParams as BatchParams

F64 = np.typing.NDArray[np.float64]


class UpdateFn(Protocol):
    """An update rule with ``rank_one_factors``' signature (a whole implementation)."""

    def __call__(
        self,
        W0: torch.Tensor,
        C: torch.Tensor | CovarianceFactor,
        k_star: torch.Tensor,
        k_prompt: torch.Tensor,
        v_star: torch.Tensor,
        *,
        bias: torch.Tensor | None = None,
    ) -> RankOne: ...


class UpdateArgs(TypedDict):
    """A case's inputs as tensors: ``rank_one_update(**args, variant=...)``."""

    W0: torch.Tensor  # (d_out, d_in)
    C: torch.Tensor  # (d_in, d_in)
    k_star: torch.Tensor  # (d_in,)
    k_prompt: torch.Tensor  # (d_in,)
    v_star: torch.Tensor  # (d_out,)
    bias: torch.Tensor | None  # (d_out,)


@dataclass(frozen=True)
class CaseParams:
    """Everything that determines a test case; ``make_case`` builds the arrays from it."""

    seed: int
    d_in: int
    d_out: int
    log10_cond: float  # κ(C) = 10**log10_cond exactly (for d_in ≥ 2)
    angle_deg: float  # angle between k_star and k_prompt under the C⁻¹ inner product
    with_bias: bool


@dataclass(frozen=True)
class Case:
    """float64 inputs of one update; ``bias`` is None for a module without bias."""

    params: CaseParams
    W0: F64
    C: F64
    k_star: F64
    k_prompt: F64
    v_star: F64
    bias: F64 | None

    def key(self, name: KeyName) -> F64:
        return self.k_star if name == "k_star" else self.k_prompt

    def torch_args(self, dtype: torch.dtype, device: str = "cpu") -> UpdateArgs:
        """The inputs as tensors under ``rank_one_update``'s parameter names."""

        def t(x: F64) -> torch.Tensor:
            return torch.tensor(x, dtype=dtype, device=device)

        return UpdateArgs(
            W0=t(self.W0),
            C=t(self.C),
            k_star=t(self.k_star),
            k_prompt=t(self.k_prompt),
            v_star=t(self.v_star),
            bias=None if self.bias is None else t(self.bias),
        )


def make_case(p: CaseParams) -> Case:
    """Well-posed inputs by construction.

    ``C = L Lᵀ`` with random eigenvectors, eigenvalues log-spaced over ``log10_cond`` decades
    and an overall scale in [10⁻², 10²]. Keys are ``k = L z`` so that ``k*ᵀ C⁻¹ k_s = z*ᵀ z_s``:
    the whitened keys ``z`` have the requested angle and norms in [0.5, 2]. ``v*`` is random
    and of the size of ``W0 k*`` (so the residual v* − b − W0 k is not small).
    """
    rng = np.random.default_rng(p.seed)
    Q, _ = np.linalg.qr(rng.standard_normal((p.d_in, p.d_in)))
    scale = 10 ** rng.uniform(-2, 2)
    eigenvalues = scale * np.logspace(0, -p.log10_cond, p.d_in)
    L = Q * np.sqrt(eigenvalues)  # C = L Lᵀ
    C = L @ L.T
    C = (C + C.T) / 2
    z_star = rng.standard_normal(p.d_in)
    z_star /= np.linalg.norm(z_star)
    if p.d_in == 1:  # one dimension: the keys can only be parallel
        z_prompt = z_star
    else:
        w = rng.standard_normal(p.d_in)
        w -= (w @ z_star) * z_star
        w /= np.linalg.norm(w)
        theta = math.radians(p.angle_deg)
        z_prompt = math.cos(theta) * z_star + math.sin(theta) * w
    k_star = L @ z_star * rng.uniform(0.5, 2.0)
    k_prompt = L @ z_prompt * rng.uniform(0.5, 2.0)
    W0 = rng.standard_normal((p.d_out, p.d_in)) / math.sqrt(p.d_in)
    size = 1.0 + float(np.linalg.norm(W0 @ k_star)) / math.sqrt(p.d_out)
    v_star = rng.standard_normal(p.d_out) * size
    bias = rng.standard_normal(p.d_out) * size if p.with_bias else None
    return Case(p, W0, C, k_star, k_prompt, v_star, bias)


def case_params(
    *,
    dims: st.SearchStrategy[int] | None = None,
    max_log10_cond: float = 3.0,
    max_angle_deg: float = 60.0,
    with_bias: st.SearchStrategy[bool] | None = None,
) -> st.SearchStrategy[CaseParams]:
    """Strategy for ``CaseParams``; shrinks toward small, well-conditioned, aligned cases."""
    dims = dims if dims is not None else st.integers(1, 12)
    return st.builds(
        CaseParams,
        seed=st.integers(0, 2**32 - 1),
        d_in=dims,
        d_out=dims,
        log10_cond=st.floats(0.0, max_log10_cond),
        angle_deg=st.floats(0.0, max_angle_deg),
        with_bias=with_bias if with_bias is not None else st.booleans(),
    )


# --- the properties -------------------------------------------------------------------------


class PropertyFailure(AssertionError):
    """A property does not hold on a case."""


# bound = MARGIN × floor, the floor being the largest misfit a correct computation reaches on
# the same case in the same dtype (``Reading``). Measured over 400 seeded cases per dtype
# (docs/results/check-variant-bounds.md): correct r-ROME computed otherwise (u of unit length;
# u by an LU solve) reaches at most 7.71× the floor, the largest ratio still growing with the
# number of cases (2.9 → 5.6 from 100 to 400 in float32's scale_invariance), so 4 × 7.71; the
# weakest planted bug (factors rounded through bfloat16, checked in float32) reaches 2.2e4×.
MARGIN = 31.0


Reading = property_report.Reading


@dataclass(frozen=True)
class BuiltinInsertion:
    """A correct computation of the declared keys' update in the checked dtype: the built-in
    rule, with C⁻¹ applied by triangular solves (as the editor does) or through an explicit
    inverse (as the public code does)."""

    inserts_at: KeyName
    direction_at: KeyName
    explicit_inverse: bool

    def __call__(
        self,
        W0: torch.Tensor,
        C: torch.Tensor | CovarianceFactor,
        k_star: torch.Tensor,
        k_prompt: torch.Tensor,
        v_star: torch.Tensor,
        *,
        bias: torch.Tensor | None = None,
    ) -> RankOne:
        if self.explicit_inverse and isinstance(C, torch.Tensor):
            C = ExplicitInverse(C.to(accumulation_dtype(W0)))
        rule = Insertion(self.inserts_at, self.direction_at)
        return rank_one_factors(W0, C, k_star, k_prompt, v_star, rule, bias=bias)


@dataclass(frozen=True)
class UpdateUnderTest:
    """What is checked: which update, which keys, in which dtype."""

    update: UpdateFn
    inserts_at: KeyName
    direction_at: KeyName
    dtype: torch.dtype

    def delta(self, case: Case, **overrides: F64 | None) -> F64:
        """Run the update on ``case`` (with some inputs replaced) and return ΔW in float64."""
        args = {
            "W0": case.W0,
            "C": case.C,
            "k_star": case.k_star,
            "k_prompt": case.k_prompt,
            "v_star": case.v_star,
            "bias": case.bias,
        }
        args.update(overrides)
        t = {k: None if v is None else torch.tensor(v, dtype=self.dtype) for k, v in args.items()}
        bias = t.pop("bias")
        r = self.update(**t, bias=bias)  # type: ignore[arg-type]
        return _f64(r.delta())

    def factors(self, case: Case) -> RankOne:
        return self.update(**case.torch_args(self.dtype))

    def correct(self) -> tuple[UpdateUnderTest, ...]:
        """The correct computations of the same keys in the same dtype (the floor's)."""
        return tuple(
            replace(self, update=BuiltinInsertion(self.inserts_at, self.direction_at, explicit))
            for explicit in (False, True)
        )


def _f64(x: torch.Tensor) -> F64:
    return np.asarray(x.detach().to("cpu", torch.float64).numpy(), dtype=np.float64)


def _fail(condition: bool, message: str) -> None:
    if not condition:
        raise PropertyFailure(message)


def _aux_rng(case: Case) -> np.random.Generator:
    """Randomness a property needs beyond the case (α, b, j), derived from the case seed."""
    return np.random.default_rng([case.params.seed, 1])


def _norm(x: F64) -> float:
    return float(np.linalg.norm(x))


def prop_finite(b: UpdateUnderTest, case: Case) -> None:
    r = b.factors(case)
    p = case.params
    _fail(
        tuple(r.left.shape) == (p.d_out,) and tuple(r.right.shape) == (p.d_in,),
        f"factor shapes {tuple(r.left.shape)}, {tuple(r.right.shape)}; "
        f"expected ({p.d_out},), ({p.d_in},)",
    )
    for name, x in (("left", r.left), ("right", r.right), ("denominator", r.denominator)):
        _fail(bool(torch.isfinite(x).all()), f"{name} is not finite")


def prop_rank_one(b: UpdateUnderTest, case: Case) -> None:
    r = b.factors(case)
    p = case.params
    _fail(
        tuple(r.left.shape) == (p.d_out,) and tuple(r.right.shape) == (p.d_in,),
        f"ΔW = outer(left, right) has shape {(r.left.numel(), r.right.numel())}, "
        f"W0 has {(p.d_out, p.d_in)}",
    )
    _fail(_norm(_f64(r.delta())) > 0, "ΔW is zero although v* − b − W0 k ≠ 0")


# A misfit: how far an update is from what a property states on a case, relative to the sizes
# involved (0 in exact arithmetic for a correct update).
Misfit = Callable[[UpdateUnderTest, Case], float]


def insertion_misfit(b: UpdateUnderTest, case: Case, key: KeyName) -> float:
    """‖(W0 + ΔW) k + b − v*‖ / (‖v*‖ + (‖W0‖ + ‖ΔW‖) ‖k‖) at the key called ``key``."""
    delta, k = b.delta(case), case.key(key)
    out = (case.W0 + delta) @ k + (0 if case.bias is None else case.bias)
    scale = _norm(case.v_star) + (_norm(case.W0) + _norm(delta)) * _norm(k)
    return _norm(out - case.v_star) / scale


def _exact_insertion(b: UpdateUnderTest, case: Case) -> float:
    return insertion_misfit(b, case, b.inserts_at)


def _scale_invariance(b: UpdateUnderTest, case: Case) -> float:
    """‖ΔW(αC) − ΔW(C)‖ / ‖ΔW(C)‖ for an α in [10⁻³, 10³] drawn from the case seed."""
    alpha = 10 ** _aux_rng(case).uniform(-3, 3)
    delta, scaled = b.delta(case), b.delta(case, C=alpha * case.C)
    return _norm(scaled - delta) / _norm(delta)


def _null_space(b: UpdateUnderTest, case: Case) -> float:
    """‖ΔW j‖ / (‖ΔW‖ ‖g‖) for j = P g, P the projection onto C⁻¹d's orthogonal complement."""
    u = rome_ref.update.solve_c(case.C, case.key(b.direction_at))
    g = _aux_rng(case).standard_normal(case.params.d_in)
    j = g - (u @ g) / (u @ u) * u  # u(d)ᵀ j = 0 (j is rounding noise when d_in = 1)
    delta = b.delta(case)
    # relative to ‖g‖: the projection itself is only accurate to ε ‖g‖
    return _norm(delta @ j) / (_norm(delta) * _norm(g))


def _c_norm(delta: F64, C: F64) -> float:
    return float(np.trace(delta @ C @ delta.T))


def _minimality(b: UpdateUnderTest, case: Case) -> float:
    """√(tr(E C Eᵀ) / tr(ΔW* C ΔW*ᵀ)), E = ΔW − ΔW*: the C-norm distance to ΔW*, the unique
    minimizer of tr(ΔW C ΔWᵀ) among updates inserting at the key (``batched_closed_form``
    with K = [k]). An inserting ΔW has C-norm² = that of ΔW* plus tr(E C Eᵀ), so this is its
    excess; a ΔW that does not insert is as far as it misses."""
    k = case.key(b.inserts_at)[:, None]
    best = rome_ref.batched_closed_form(case.W0, case.C, k, case.v_star[:, None], bias=case.bias)
    return math.sqrt(_c_norm(b.delta(case) - best, case.C) / _c_norm(best, case.C))


def _bias_cancellation(b: UpdateUnderTest, case: Case) -> float:
    """‖ΔW(v*, bias=b) − ΔW(v* − b, no bias)‖ / ‖ΔW(v* − b, no bias)‖ for a random b."""
    bias = _aux_rng(case).standard_normal(case.params.d_out) * (1 + np.abs(case.v_star).max())
    with_bias = b.delta(case, bias=bias)
    shifted = b.delta(case, v_star=case.v_star - bias, bias=None)
    return _norm(with_bias - shifted) / _norm(shifted)


def _denominator(b: UpdateUnderTest, case: Case) -> float:
    """|reported − u(d)ᵀk| / |u(d)ᵀk| (infinite when the reported one is not finite)."""
    reported = float(b.factors(case).denominator)
    u = rome_ref.update.solve_c(case.C, case.key(b.direction_at))
    expected = float(u @ case.key(b.inserts_at))
    return abs(reported - expected) / abs(expected) if math.isfinite(reported) else math.inf


def measure(misfit: Misfit, b: UpdateUnderTest, case: Case) -> Reading:
    """The misfit of the update under test and its floor on ``case``: the largest misfit of
    the correct computations there, and never below ε of the dtype (rounding the inputs to it
    already costs that much)."""
    floors = [misfit(correct, case) for correct in b.correct()]
    return Reading(misfit(b, case), max([float(torch.finfo(b.dtype).eps), *floors]), MARGIN)


@dataclass(frozen=True)
class NumericProperty:
    """A property whose misfit must stay within MARGIN × its floor on the case."""

    misfit: Misfit
    what: str  # the misfit in words; {inserts_at} and {direction_at} name the keys

    def __call__(self, b: UpdateUnderTest, case: Case) -> Reading:
        reading = measure(self.misfit, b, case)
        what = self.what.format(inserts_at=b.inserts_at, direction_at=b.direction_at)
        _fail(reading.passed, f"{what} = {reading.describe()}")
        return reading


# A property raises PropertyFailure when it does not hold; a numeric one returns its Reading.
Property = Callable[[UpdateUnderTest, Case], Reading | None]

PROPERTIES: dict[str, Property] = {
    "finite": prop_finite,
    "rank_one": prop_rank_one,
    "exact_insertion": NumericProperty(_exact_insertion, "‖Ŵ {inserts_at} + b − v*‖ (relative)"),
    "scale_invariance": NumericProperty(_scale_invariance, "‖ΔW(αC) − ΔW(C)‖ / ‖ΔW‖"),
    "null_space": NumericProperty(_null_space, "‖ΔW j‖ / (‖ΔW‖‖g‖) for j ⟂ C⁻¹{direction_at}"),
    "minimality": NumericProperty(
        _minimality, "C-norm distance to the least update inserting at {inserts_at} (relative)"
    ),
    "bias_cancellation": NumericProperty(
        _bias_cancellation, "‖ΔW(v*, bias=b) − ΔW(v* − b, no bias)‖ / ‖ΔW‖"
    ),
    "denominator": NumericProperty(
        _denominator, "|reported denominator − u({direction_at})ᵀ{inserts_at}| (relative)"
    ),
}


@dataclass(frozen=True)
class VariantUpdate:
    """The update rule that runs a variant through ``rank_one_factors`` (data, so that a
    reproducer can write it)."""

    variant: Variant

    def __call__(
        self,
        W0: torch.Tensor,
        C: torch.Tensor | CovarianceFactor,
        k_star: torch.Tensor,
        k_prompt: torch.Tensor,
        v_star: torch.Tensor,
        *,
        bias: torch.Tensor | None = None,
    ) -> RankOne:
        return rank_one_factors(W0, C, k_star, k_prompt, v_star, self.variant, bias=bias)


def variant_update(fn: Variant) -> UpdateFn:
    """The update rule that runs variant ``fn`` through ``rank_one_factors``."""
    return VariantUpdate(fn)


@reproducible
def run_property(
    name: str,
    update: UpdateFn,
    params: CaseParams,
    *,
    inserts_at: KeyName,
    direction_at: KeyName | None = None,
    dtype: torch.dtype = torch.float64,
) -> Reading | None:
    """Check one property on one case and return its reading (None: a property without a
    floor); raises ``PropertyFailure`` (or the update's error) with a note holding the snippet
    that repeats this call in a fresh interpreter."""
    battery = UpdateUnderTest(update, inserts_at, direction_at or inserts_at, dtype)
    return PROPERTIES[name](battery, make_case(params))


# --- the report ------------------------------------------------------------------------------

# A row's reproducer: "reproduce with:" and a snippet that runs as pasted, or why there is none.
PropertyResult = property_report.PropertyResult[CaseParams]


class VariantCheckError(AssertionError):
    """Raised by ``VariantReport.raise_if_failed``."""


@dataclass(frozen=True)
class VariantReport:
    name: str
    inserts_at: KeyName
    direction_at: KeyName
    results: tuple[PropertyResult, ...]
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return property_report.all_passed(self.results)

    @property
    def failed(self) -> tuple[str, ...]:
        return property_report.failed_names(self.results)

    def __str__(self) -> str:
        head = (
            f"variant {self.name}: inserts at {self.inserts_at}, direction C⁻¹{self.direction_at} "
            f"({', '.join(f'{k}={v}' for k, v in self.settings.items())})"
        )
        return property_report.report_text(head, self.results)

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise VariantCheckError(str(self))


def _describe_failure(battery: UpdateUnderTest, name: str, params: CaseParams) -> str:
    try:
        PROPERTIES[name](battery, make_case(params))
    except Exception as error:  # the update's own errors are failures too
        prefix = "" if isinstance(error, PropertyFailure) else f"{type(error).__name__}: "
        return prefix + str(error).splitlines()[0]
    return "flaky: the shrunk case passes on rerun"


def other_key_row(battery: UpdateUnderTest, seed: int) -> PropertyResult:
    """What the update does at the key it does not promise to insert at (status noted): it
    also inserts there when its misfit at that key is within the bound of exact insertion."""
    other = next(k for k in KEY_NAMES if k != battery.inserts_at)
    params = CaseParams(seed, d_in=8, d_out=8, log10_cond=1.0, angle_deg=30.0, with_bias=False)
    case = make_case(params)
    try:
        delta = battery.delta(case)
        at_other = measure(partial(insertion_misfit, key=other), battery, case).value
        inserted = at_other <= measure(_exact_insertion, battery, case).bound
    except Exception as error:  # the properties above report the update's own errors
        return PropertyResult(f"misses_{other}", "noted", f"not measured: {error}", params)
    out = (case.W0 + delta) @ case.key(other)
    relative = _norm(out - case.v_star) / _norm(case.v_star)
    verdict = "also inserts at" if inserted else "misses"
    return PropertyResult(
        f"misses_{other}",
        "noted",
        f"{verdict} {other}: ‖Ŵ {other} − v*‖/‖v*‖ = {relative:.3g} with the keys 30° apart "
        f"(inserts at {battery.inserts_at}, moves along C⁻¹{battery.direction_at})",
        params,
    )


def check_update(
    update: UpdateFn,
    *,
    inserts_at: KeyName,
    direction_at: KeyName | None = None,
    name: str = "update",
    max_examples: int = 60,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    shrink: bool = True,
) -> VariantReport:
    """Run the battery on a whole update rule (``rank_one_factors``' signature).

    Each property gets its own seeded hypothesis search (``max_examples`` cases); a failing
    case is shrunk to the smallest ``CaseParams`` hypothesis finds. For float32 and lower the
    condition numbers are limited to 10² (the range MARGIN was measured over).
    ``shrink=False`` reports the first failing case found instead (much faster on failure).
    """
    direction = direction_at or inserts_at
    battery = UpdateUnderTest(update, inserts_at, direction, dtype)
    strategy = case_params(max_log10_cond=3.0 if dtype == torch.float64 else 2.0)
    phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]
    config = settings(
        max_examples=max_examples,
        database=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
    )
    results = []
    for prop_name, prop in PROPERTIES.items():
        if prop_name == "minimality" and direction != inserts_at:
            results.append(
                PropertyResult(
                    prop_name,
                    "skipped",
                    "direction key differs from the insert key: not a minimizer by design",
                )
            )
            continue

        readings: list[Reading] = []

        def fails(
            params: CaseParams, prop: Property = prop, readings: list[Reading] = readings
        ) -> bool:
            try:
                reading = prop(battery, make_case(params))
            except Exception:
                return True
            readings.extend([] if reading is None else [reading])
            return False

        try:
            smallest = find(strategy, fails, settings=config, random=random.Random(seed))
        except NoSuchExample:
            results.append(PropertyResult(prop_name, "passed", property_report.worst(readings)))
            continue
        results.append(
            PropertyResult(
                prop_name,
                "failed",
                _describe_failure(battery, prop_name, smallest),
                smallest,
                reproducer_note(
                    run_property,
                    prop_name,
                    update,
                    smallest,
                    inserts_at=inserts_at,
                    direction_at=direction,
                    dtype=dtype,
                ),
            )
        )
    results.append(other_key_row(battery, seed))
    return VariantReport(
        name,
        inserts_at,
        direction,
        tuple(results),
        {"max_examples": max_examples, "seed": seed, "dtype": dtype},
    )


def check_variant(
    fn: Variant,
    *,
    inserts_at: KeyName | None = None,
    direction_at: KeyName | None = None,
    max_examples: int = 60,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    shrink: bool = True,
) -> VariantReport:
    """Run the battery on a variant ``fn(UpdateInputs) -> RankOne`` (the built-ins' contract).

    A registered variant is checked against its registered keys (``inserts_at`` and
    ``direction_at``, the key whose ``C⁻¹ d`` ΔW moves along), so
    ``check_variant(get_variant("rome"))`` checks the original as what it is: an insertion at
    k_prompt along C⁻¹k*. Either key can be overridden. For a plain function ``inserts_at``
    defaults to ``"k_star"`` and ``direction_at`` to ``inserts_at``.
    """
    if isinstance(fn, RegisteredVariant):
        inserts_at = inserts_at or fn.inserts_at
        direction_at = direction_at or fn.direction_at
    inserts_at = inserts_at or "k_star"
    name = fn.name if isinstance(fn, RegisteredVariant) else getattr(fn, "__name__", repr(fn))
    return check_update(
        variant_update(fn),
        inserts_at=inserts_at,
        direction_at=direction_at,
        name=name,
        max_examples=max_examples,
        seed=seed,
        dtype=dtype,
        shrink=shrink,
    )
