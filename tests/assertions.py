"""Assertion helpers, and the tolerance model they use. A failure's reproducer is the note
``rome_fast.infra.reproducer.reproducible`` attaches to it (decorate the check that calls these).

Tolerance model (relative to max |ΔW_ref|), for ΔW returned in dtype ``out`` and accumulated in
dtype ``acc``: ``u(out) + 4 √(d_in + d_out) ε(acc) (κ(C) / cos θ + ρ)``. ``u(out) = ε(out)/2``
is the final rounding of ΔW; the second term is the solve with C (error ∝ κ) and the sums of
length ≈ d (√d: the usual statistical model of rounding errors), amplified by 1/cos θ in the
original's mixed-key denominator (θ the whitened key angle), plus the cancellation in
``v − W0 k`` (ρ, see ``residual_condition``; found by hypothesis on a 1×1 float32 case).
Over 300 random cases per dtype (dims up to 300), without ρ, the measured constant
was ≤ 0.3, so 4 leaves a margin above 10.
Low-precision cases are compared with the reference run on the *rounded* inputs, so input
quantization is not counted as implementation error.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from hypothesis import note
from hypothesis.control import currently_in_test_context

import rome_ref
from rome_fast.infra.reproducer import HEADER, reproducible
from rome_fast.methods.rome.update import rank_one_update
from rome_fast.testing import Case, CaseParams, make_case

ROOT = Path(__file__).resolve().parents[1]  # where a test's reproducer is pasted and run


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


def analytic_tolerance(case: Case, dtype: torch.dtype) -> float:
    """``16 (d_in + d_out) ε(dtype) (κ(C) / cos θ + ρ)``, relative: the rounding a computation
    of the update on ``case`` may amplify (the tests of the built-ins' own facts use it; the
    property battery measures its floors instead)."""
    p = case.params
    return 16 * (p.d_in + p.d_out) * torch.finfo(dtype).eps * error_growth(case)


def tolerance(params: CaseParams, out: torch.dtype, acc: torch.dtype) -> float:
    eps_acc = torch.finfo(acc).eps
    growth = error_growth(make_case(params))
    return torch.finfo(out).eps / 2 + 4 * math.sqrt(params.d_in + params.d_out) * eps_acc * growth


def _note(text: str) -> None:
    if currently_in_test_context():  # the helpers are also used outside @given
        note(text)


def assert_close(
    actual: np.ndarray,
    expected: np.ndarray,
    *,
    rtol: float,
    what: str,
) -> None:
    """max |actual − expected| ≤ rtol · max |expected|."""
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    error = float(np.abs(actual - expected).max()) if expected.size else 0.0
    _note(f"{what}: error {error:.3g}, bound {rtol * scale:.3g}")
    assert error <= rtol * scale, f"{what}: max error {error:.3g} > {rtol:.3g} · {scale:.3g}"


def assert_small(value: float, bound: float, *, what: str) -> None:
    _note(f"{what}: {value:.3g} (bound {bound:.3g})")
    assert value <= bound, f"{what} = {value:.3g} > {bound:.3g}"


def to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


@reproducible
def assert_matches_reference(
    params: CaseParams, variant: str, dtype: torch.dtype, device: str = "cpu", *, tf32: bool = False
) -> None:
    """ΔW from rome_fast (inputs in ``dtype``; C in float64 for float64, else float32, as the
    statistics are stored) against rome_ref on the same, rounded, inputs."""
    case = make_case(params)
    t = case.torch_args(dtype, device)
    c_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    t["C"] = torch.tensor(case.C, dtype=c_dtype, device=device)
    rounded = {name: to_numpy(x) for name, x in t.items() if isinstance(x, torch.Tensor)}
    delta = rank_one_update(**t, variant=variant)
    assert delta.dtype == dtype
    assert delta.device.type == torch.device(device).type
    expected = rome_ref.rank_one_update(
        rounded["W0"],
        rounded["C"],
        rounded["k_star"],
        rounded["k_prompt"],
        rounded["v_star"],
        variant,
        bias=rounded.get("bias"),
    )
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    rtol = tolerance(params, dtype, acc)
    if tf32:  # TF32 matmuls keep 10 mantissa bits
        rtol += 4 * (params.d_in + params.d_out) ** 0.5 * 10**params.log10_cond * 2.0**-10
    assert_close(
        to_numpy(delta), expected, rtol=rtol, what=f"rome_fast vs rome_ref ({variant}, {dtype})"
    )


def reproducer_of(failure: BaseException) -> str:
    """The snippet ``reproducible`` attached to ``failure`` (its note, without the header)."""
    notes: list[str] = [n for n in getattr(failure, "__notes__", []) if n.startswith(HEADER)]
    assert notes, f"{type(failure).__name__} carries no reproducer: {failure}"
    return notes[-1].removeprefix(HEADER).strip("\n")


def failure_in_fresh_interpreter(snippet: str) -> str:
    """Run ``snippet`` as ``python -c`` from the repository root, as a user pastes it; return
    the line naming the exception it ended with ("" when it raised nothing)."""
    done = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = done.stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    if done.returncode == 0 or not starts:
        return ""
    return next(line for line in lines[starts[-1] + 1 :] if not line.startswith(" "))
