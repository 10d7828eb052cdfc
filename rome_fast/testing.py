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
``u = C⁻¹ d`` with ``d`` the ``direction_at`` key (default: the same key), the properties are,
with ``tol = 16 (d_in + d_out) ε(dtype) (κ(C) / cos θ + ρ)`` (θ the whitened angle between the
keys, at most 60° here; ρ = (‖v‖ + ‖W0‖‖k‖) / ‖v − W0 k‖ the cancellation in the residual,
v = v* − b), all measured in float64 from the returned factors:

- ``finite``: the variant runs and returns finite factors of shapes (d_out,), (d_in,).
- ``rank_one``: ΔW = outer(left, right) is nonzero (the inputs make v* − b − W0 k ≠ 0), i.e.
  rank exactly one, with the factors in (d_out, d_in) orientation.
- ``exact_insertion``: ‖(W0 + ΔW) k + b − v*‖ ≤ tol (‖v*‖ + (‖W0‖ + ‖ΔW‖) ‖k‖).
- ``scale_invariance``: ΔW(α C) = ΔW(C) for an α in [10⁻³, 10³] (relative to ‖ΔW‖).
- ``null_space``: ΔW j = 0 for j = P g, g random and P the projection onto u(d)^⟂ (so
  u(d)ᵀ j = 0), i.e. the row space of ΔW is spanned by C⁻¹ d (relative to ‖ΔW‖ ‖g‖).
- ``minimality`` (only when direction_at == inserts_at; skipped otherwise): ΔW inserts
  exactly and tr(ΔW C ΔWᵀ) ≤ (1 + tol) tr(ΔW* C ΔW*ᵀ), where ΔW* is the batched closed form
  ``rome_ref.batched_closed_form`` with K = [k], the unique minimizer among inserting updates.
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
from dataclasses import dataclass, field
from typing import Protocol, TypedDict

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

import rome_ref
from rome_fast.infra import property_report
from rome_fast.infra.reproducer import reproducer_note, reproducible
from rome_fast.methods.rome.update import CovarianceFactor, RankOne, Variant, rank_one_factors
from rome_fast.methods.rome.variants import KEY_NAMES, KeyName, RegisteredVariant
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

    def tol(self, case: Case) -> float:
        p = case.params
        eps = torch.finfo(self.dtype).eps
        return 16 * (p.d_in + p.d_out) * eps * error_growth(case)


def error_growth(case: Case) -> float:
    """How much a case amplifies rounding: κ(C) / cos(key angle) + the residual's cancellation."""
    p = case.params
    return 10**p.log10_cond / math.cos(math.radians(p.angle_deg)) + residual_condition(case)


def residual_condition(case: Case) -> float:
    """ρ = max over both keys of (‖v‖ + ‖W0‖‖k‖) / ‖v − W0 k‖, v = v* − b: the cancellation
    in the numerator residual (large when v* happens to be close to W0 k + b)."""
    v = case.v_star if case.bias is None else case.v_star - case.bias
    w0_norm = float(np.linalg.norm(case.W0, 2))
    return max(
        (float(np.linalg.norm(v)) + w0_norm * float(np.linalg.norm(k)))
        / float(np.linalg.norm(v - case.W0 @ k))
        for k in (case.k_star, case.k_prompt)
    )


def _f64(x: torch.Tensor) -> F64:
    return np.asarray(x.detach().to("cpu", torch.float64).numpy(), dtype=np.float64)


def _fail(condition: bool, message: str) -> None:
    if not condition:
        raise PropertyFailure(message)


def _aux_rng(case: Case) -> np.random.Generator:
    """Randomness a property needs beyond the case (α, b, j), derived from the case seed."""
    return np.random.default_rng([case.params.seed, 1])


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
    _fail(float(np.linalg.norm(_f64(r.delta()))) > 0, "ΔW is zero although v* − b − W0 k ≠ 0")


def _insertion_error(b: UpdateUnderTest, case: Case, delta: F64) -> tuple[float, float]:
    k = case.key(b.inserts_at)
    out = (case.W0 + delta) @ k + (0 if case.bias is None else case.bias)
    scale = np.linalg.norm(case.v_star) + (
        np.linalg.norm(case.W0) + np.linalg.norm(delta)
    ) * np.linalg.norm(k)
    return float(np.linalg.norm(out - case.v_star)), float(b.tol(case) * scale)


def prop_exact_insertion(b: UpdateUnderTest, case: Case) -> None:
    error, bound = _insertion_error(b, case, b.delta(case))
    _fail(error <= bound, f"‖Ŵ {b.inserts_at} + b − v*‖ = {error:.3g} > {bound:.3g}")


def prop_scale_invariance(b: UpdateUnderTest, case: Case) -> None:
    alpha = 10 ** _aux_rng(case).uniform(-3, 3)
    delta, scaled = b.delta(case), b.delta(case, C=alpha * case.C)
    diff = float(np.linalg.norm(scaled - delta))
    bound = b.tol(case) * float(np.linalg.norm(delta))
    _fail(diff <= bound, f"‖ΔW(αC) − ΔW(C)‖ = {diff:.3g} > {bound:.3g} for α = {alpha:.3g}")


def prop_null_space(b: UpdateUnderTest, case: Case) -> None:
    u = rome_ref.update.solve_c(case.C, case.key(b.direction_at))
    g = _aux_rng(case).standard_normal(case.params.d_in)
    j = g - (u @ g) / (u @ u) * u  # u(d)ᵀ j = 0 (j is rounding noise when d_in = 1)
    delta = b.delta(case)
    leak = float(np.linalg.norm(delta @ j))
    # relative to ‖g‖: the projection itself is only accurate to ε ‖g‖
    bound = b.tol(case) * float(np.linalg.norm(delta) * np.linalg.norm(g))
    _fail(leak <= bound, f"‖ΔW j‖ = {leak:.3g} > {bound:.3g} for j ⟂ C⁻¹{b.direction_at}")


def _c_norm(delta: F64, C: F64) -> float:
    return float(np.trace(delta @ C @ delta.T))


def prop_minimality(b: UpdateUnderTest, case: Case) -> None:
    delta = b.delta(case)
    error, bound = _insertion_error(b, case, delta)
    _fail(
        error <= bound,
        f"ΔW does not insert at {b.inserts_at} (residual {error:.3g}), so it is not the minimizer",
    )
    k = case.key(b.inserts_at)[:, None]
    best = rome_ref.batched_closed_form(case.W0, case.C, k, case.v_star[:, None], bias=case.bias)
    ours, least = _c_norm(delta, case.C), _c_norm(best, case.C)
    _fail(
        ours <= (1 + b.tol(case)) * least,
        f"tr(ΔW C ΔWᵀ) = {ours:.6g} exceeds the minimum {least:.6g} "
        f"over updates inserting at {b.inserts_at}",
    )


def prop_bias_cancellation(b: UpdateUnderTest, case: Case) -> None:
    bias = _aux_rng(case).standard_normal(case.params.d_out) * (1 + np.abs(case.v_star).max())
    with_bias = b.delta(case, bias=bias)
    shifted = b.delta(case, v_star=case.v_star - bias, bias=None)
    diff = float(np.linalg.norm(with_bias - shifted))
    bound = b.tol(case) * float(np.linalg.norm(shifted))
    _fail(diff <= bound, f"‖ΔW(v*, bias=b) − ΔW(v* − b, no bias)‖ = {diff:.3g} > {bound:.3g}")


def prop_denominator(b: UpdateUnderTest, case: Case) -> None:
    r = b.factors(case)
    reported = float(r.denominator)
    u = rome_ref.update.solve_c(case.C, case.key(b.direction_at))
    expected = float(u @ case.key(b.inserts_at))
    _fail(math.isfinite(reported), f"denominator {reported} is not finite")
    _fail(
        abs(reported - expected) <= b.tol(case) * abs(expected),
        f"reported denominator {reported:.6g} ≠ "
        f"u({b.direction_at})ᵀ{b.inserts_at} = {expected:.6g}",
    )


Property = Callable[[UpdateUnderTest, Case], None]

PROPERTIES: dict[str, Property] = {
    "finite": prop_finite,
    "rank_one": prop_rank_one,
    "exact_insertion": prop_exact_insertion,
    "scale_invariance": prop_scale_invariance,
    "null_space": prop_null_space,
    "minimality": prop_minimality,
    "bias_cancellation": prop_bias_cancellation,
    "denominator": prop_denominator,
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
) -> None:
    """Check one property on one case; raises ``PropertyFailure`` (or the update's error)
    with a note holding the snippet that repeats this call in a fresh interpreter."""
    battery = UpdateUnderTest(update, inserts_at, direction_at or inserts_at, dtype)
    PROPERTIES[name](battery, make_case(params))


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
    """What the update does at the key it does not promise to insert at (status noted)."""
    other = next(k for k in KEY_NAMES if k != battery.inserts_at)
    params = CaseParams(seed, d_in=8, d_out=8, log10_cond=1.0, angle_deg=30.0, with_bias=False)
    case = make_case(params)
    try:
        delta = battery.delta(case)
    except Exception as error:  # the properties above report the update's own errors
        return PropertyResult(f"misses_{other}", "noted", f"not measured: {error}", params)
    out = (case.W0 + delta) @ case.key(other)
    relative = float(np.linalg.norm(out - case.v_star) / np.linalg.norm(case.v_star))
    inserted = relative <= battery.tol(case)
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
    condition numbers are limited to 10² so that the tolerances stay meaningful.
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

        def fails(params: CaseParams, prop: Property = prop) -> bool:
            try:
                prop(battery, make_case(params))
            except Exception:
                return True
            return False

        try:
            smallest = find(strategy, fails, settings=config, random=random.Random(seed))
        except NoSuchExample:
            results.append(PropertyResult(prop_name, "passed"))
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
