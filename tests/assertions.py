"""Assertion helpers that print a reproducer, and the tolerance model they use.

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

import numpy as np
import torch
from hypothesis import note
from hypothesis.control import currently_in_test_context

import rome_ref
from rome_fast.methods.rome.update import rank_one_update
from rome_fast.testing import CaseParams, error_growth, make_case


def tolerance(params: CaseParams, out: torch.dtype, acc: torch.dtype) -> float:
    eps_acc = torch.finfo(acc).eps
    growth = error_growth(make_case(params))
    return torch.finfo(out).eps / 2 + 4 * math.sqrt(params.d_in + params.d_out) * eps_acc * growth


def _note(text: str) -> None:
    if currently_in_test_context():  # the helpers are also used outside @given
        note(text)


def reproducer(params: CaseParams, call: str) -> str:
    """A snippet that rebuilds the inputs and repeats the failing call."""
    return (
        f"from rome_fast.testing import CaseParams, make_case\ncase = make_case({params!r})\n{call}"
    )


def assert_close(
    actual: np.ndarray,
    expected: np.ndarray,
    *,
    rtol: float,
    params: CaseParams,
    call: str,
    what: str,
) -> None:
    """max |actual − expected| ≤ rtol · max |expected|, else fail with a reproducer."""
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    error = float(np.abs(actual - expected).max()) if expected.size else 0.0
    _note(f"{what}: error {error:.3g}, bound {rtol * scale:.3g}")
    assert error <= rtol * scale, (
        f"{what}: max error {error:.3g} > {rtol:.3g} · {scale:.3g}\n"
        f"reproduce with:\n{reproducer(params, call)}"
    )


def assert_small(value: float, bound: float, *, params: CaseParams, call: str, what: str) -> None:
    _note(f"{what}: {value:.3g} (bound {bound:.3g})")
    assert value <= bound, (
        f"{what} = {value:.3g} > {bound:.3g}\nreproduce with:\n{reproducer(params, call)}"
    )


def to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


def assert_matches_reference(
    params: CaseParams, variant: str, dtype: torch.dtype, device: str = "cpu", *, tf32: bool = False
) -> None:
    """ΔW from rome_fast (inputs in ``dtype``; C in float64 for float64, else float32, as the
    statistics are stored) against rome_ref on the same, rounded, inputs."""
    case = make_case(params)
    t = case.torch_args(dtype, device)
    c_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    t["C"] = torch.tensor(case.C, dtype=c_dtype, device=device)
    rounded = {name: to_numpy(x) for name, x in t.items() if x is not None}
    bias = t.pop("bias")
    delta = rank_one_update(**t, variant=variant, bias=bias)  # type: ignore[arg-type]
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
        to_numpy(delta),
        expected,
        rtol=rtol,
        params=params,
        call=(
            f"t = case.torch_args(torch.{str(dtype).removeprefix('torch.')})\n"
            "delta = rank_one_update(t['W0'], t['C'].float(), t['k_star'], t['k_prompt'], "
            f"t['v_star'], {variant!r}, bias=t['bias'])"
        ),
        what=f"rome_fast vs rome_ref ({variant}, {dtype})",
    )
