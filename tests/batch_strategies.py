"""Strategies for the batched solves: well-posed batches by construction (``make_batch``).

Conditioning (κ(C) up to 10³, 10² below float64), key angles (the whitened keys' condition
number up to 10), n against d_in (1 ≤ n ≤ d_in; with a null space n ≤ its dimension), and the
weights log-uniform over the ranges the public files use and beyond. And the condition number
κ of the system each method's form solves, which the tests of the solves against the
reference scale their tolerance by.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from rome_fast.testing_batch.cases import Batch, batch_params

batches = batch_params(max_dim=24)
low_precision_batches = batch_params(max_dim=24, max_log10_cond=2.0)
null_space_batches = batch_params(max_dim=24, with_null_space=True)
low_precision_null_space_batches = batch_params(
    max_dim=24, max_log10_cond=2.0, with_null_space=True
)
lambdas = st.floats(-2.0, 5.0).map(lambda x: 10**x)  # λ, λₘ (public: 10⁴ to 10⁵)
emmet_lambdas = st.floats(-3.0, 1.0).map(lambda x: 10**x)  # λₑ (public: 0.1)
alphas = st.floats(-2.0, 1.0).map(lambda x: 10**x)  # α (public: 1 and 10)


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
