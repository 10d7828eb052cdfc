"""Strategies for the update tests: well-posed cases built by construction (see make_case)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import strategies as st

from rome_fast.methods.rome.variants import BUILTIN_KEYS
from rome_fast.testing import case_params

variants = st.sampled_from(tuple(BUILTIN_KEYS))

small_dims = st.integers(1, 16)
# Mostly small shapes for speed; one branch in four reaches a couple of hundred.
dims = st.one_of(small_dims, small_dims, small_dims, st.integers(17, 200))

cases = case_params(dims=dims)
small_cases = case_params(dims=small_dims)
# Low-precision comparisons: κ(C) ≤ 10² keeps the error model meaningful.
low_precision_cases = case_params(dims=dims, max_log10_cond=2.0)
# Keys that differ in direction by at least a degree (the original's k* miss is visible).
misaligned_cases = st.builds(
    lambda p, angle: replace(p, angle_deg=angle, d_in=max(p.d_in, 2)),
    small_cases,
    st.floats(1.0, 60.0),
)
