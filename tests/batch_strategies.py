"""Strategies for the batched solves: well-posed batches by construction (``make_batch``).

Conditioning (κ(C) up to 10³, 10² below float64), key angles (the whitened keys' condition
number up to 10), n against d_in (1 ≤ n ≤ d_in; with a null space n ≤ its dimension), and the
weights log-uniform over the ranges the public files use and beyond.
"""

from __future__ import annotations

from hypothesis import strategies as st

from rome_fast.testing_batch.cases import batch_params

batches = batch_params(max_dim=24)
low_precision_batches = batch_params(max_dim=24, max_log10_cond=2.0)
null_space_batches = batch_params(max_dim=24, with_null_space=True)
low_precision_null_space_batches = batch_params(
    max_dim=24, max_log10_cond=2.0, with_null_space=True
)
lambdas = st.floats(-2.0, 5.0).map(lambda x: 10**x)  # λ, λₘ (public: 10⁴ to 10⁵)
emmet_lambdas = st.floats(-3.0, 1.0).map(lambda x: 10**x)  # λₑ (public: 0.1)
alphas = st.floats(-2.0, 1.0).map(lambda x: 10**x)  # α (public: 1 and 10)
