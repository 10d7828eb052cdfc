"""Well-posed batches of facts by construction, for the batched battery and its tests.

A ``BatchParams`` fixes everything (seed, shapes, conditioning); ``make_batch`` builds float64
arrays from it, so a failing case is reported as a ``BatchParams`` and rebuilt exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

F64 = np.typing.NDArray[np.float64]


@dataclass(frozen=True)
class BatchParams:
    """Everything that determines a batch; ``make_batch`` builds the arrays from it."""

    seed: int
    d_in: int
    d_out: int
    n: int  # facts; n ≤ d_in - null_dim so that exact insertion is possible
    log10_cond: float  # κ(C) on its range = 10**log10_cond
    log10_key_cond: float  # κ of the whitened keys: κ(KᵀC⁻¹K) = 10**(2 log10_key_cond)
    null_dim: int  # eigenvalues of C set to zero (AlphaEdit's exact null space); 0 otherwise
    with_bias: bool


@dataclass(frozen=True)
class Batch:
    """float64 inputs of one batched update. With ``null_dim`` > 0, C is singular on the span
    of ``null_basis`` and ``preserved`` (d_in, m) are keys in its range (AlphaEdit's K₀)."""

    params: BatchParams
    W0: F64  # (d_out, d_in)
    C: F64  # (d_in, d_in)
    K: F64  # (d_in, n)
    V: F64  # (d_out, n)
    bias: F64 | None  # (d_out,)
    null_basis: F64  # (d_in, null_dim)
    preserved: F64  # (d_in, m)

    def residuals(self) -> F64:
        """R = V − b − W0 K, (d_out, n)."""
        shift = 0 if self.bias is None else self.bias[:, None]
        return self.V - shift - self.W0 @ self.K


def _orthogonal(rng: np.random.Generator, d: int) -> F64:
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return np.asarray(Q, dtype=np.float64)


def make_batch(p: BatchParams) -> Batch:
    """Well-posed inputs by construction.

    ``C = Q diag(λ) Qᵀ``: on the first ``d_in − null_dim`` eigenvectors λ is log-spaced over
    ``log10_cond`` decades at a random scale in [10⁻², 10²]; on the last ``null_dim`` it is 0.
    Keys ``K = L Z`` (``L = Q diag(√λ)``, plus the null directions as they are) with
    ``Z = U diag(s) Gᵀ``, U orthonormal columns, s log-spaced over ``log10_key_cond`` decades
    and G a random rotation of the facts: the whitened keys have a chosen condition number.
    V is random at the size of W0 K (so R = V − b − W0 K is not small).
    """
    rng = np.random.default_rng(p.seed)
    Q = _orthogonal(rng, p.d_in)
    rank = p.d_in - p.null_dim
    scale = 10 ** rng.uniform(-2, 2)
    eigenvalues = np.concatenate(
        [scale * np.logspace(0, -p.log10_cond, rank), np.zeros(p.null_dim)]
    )
    C = (Q * eigenvalues) @ Q.T
    C = (C + C.T) / 2
    # whitening map: √λ on C's range, C's scale on its null space
    root = np.sqrt(np.where(eigenvalues > 0, eigenvalues, scale))
    s = np.logspace(0, -p.log10_key_cond, p.n) * rng.uniform(0.5, 2.0)
    # the conditioned part lives where the method writes: all of R^d_in, or the null space
    free = p.null_dim or p.d_in
    U = _orthogonal(rng, free)[:, : p.n]
    Z = np.zeros((p.d_in, p.n))
    Z[p.d_in - free :] = (U * s) @ _orthogonal(rng, p.n).T  # (free, n)
    if p.null_dim:  # plus a random part in C's range (preserved directions)
        Z[:rank] = rng.standard_normal((rank, p.n)) / math.sqrt(rank)
    K = (Q * root) @ Z  # (d_in, n)
    W0 = rng.standard_normal((p.d_out, p.d_in)) / math.sqrt(p.d_in)
    size = 1.0 + float(np.linalg.norm(W0 @ K)) / math.sqrt(p.d_out * p.n)
    V = rng.standard_normal((p.d_out, p.n)) * size
    bias = rng.standard_normal(p.d_out) * size if p.with_bias else None
    preserved = (Q[:, :rank] * root[:rank]) @ rng.standard_normal((rank, max(rank, 1)))
    return Batch(p, W0, C, K, V, bias, Q[:, rank:], preserved)


def batch_params(
    *,
    max_dim: int = 12,
    max_log10_cond: float = 3.0,
    max_log10_key_cond: float = 1.0,
    with_null_space: bool = False,
) -> st.SearchStrategy[BatchParams]:
    """Strategy for ``BatchParams`` with n ≤ d_in (n ≤ null_dim with a null space); shrinks
    toward small, well-conditioned batches."""

    @st.composite
    def build(draw: st.DrawFn) -> BatchParams:
        d_in = draw(st.integers(2 if with_null_space else 1, max_dim))
        null_dim = draw(st.integers(1, d_in - 1)) if with_null_space else 0
        n = draw(st.integers(1, null_dim if with_null_space else d_in))
        return BatchParams(
            seed=draw(st.integers(0, 2**32 - 1)),
            d_in=d_in,
            d_out=draw(st.integers(1, max_dim)),
            n=n,
            log10_cond=draw(st.floats(0.0, max_log10_cond)),
            log10_key_cond=draw(st.floats(0.0, max_log10_key_cond)),
            null_dim=null_dim,
            with_bias=draw(st.booleans()),
        )

    return build()


@dataclass
class LinearStack:
    """A toy model for the multi-layer schedule: a residual stream of linear layers.

    ``h_0 = x`` (d, n); layer l: key ``k_l = A_l h_l`` (d_k, n) and ``h_{l+1} = h_l + W_l k_l``;
    the output is ``h_L``. With ``keys_from_input`` the keys are ``A_l x`` instead, so that no
    edit moves another layer's keys. ``W`` is edited in place.
    """

    A: list[F64]  # (d_k, d) per layer
    W: list[F64]  # (d, d_k) per layer
    x: F64  # (d, n)
    keys_from_input: bool

    def _key(self, layer: int, h: F64) -> F64:
        return self.A[layer] @ (self.x if self.keys_from_input else h)

    def _stream(self, upto: int) -> F64:
        """h_upto, the stream entering layer ``upto`` (d, n)."""
        h = self.x
        for layer in range(upto):
            h = h + self.W[layer] @ self._key(layer, h)
        return h

    def keys(self, layer: int) -> F64:
        """k_layer on the current weights, (d_k, n)."""
        return self._key(layer, self._stream(layer))

    def output(self) -> F64:
        """h_L on the current weights, (d, n)."""
        return self._stream(len(self.A))


def make_stack(
    seed: int, layers: int, d: int, d_k: int, n: int, *, keys_from_input: bool
) -> LinearStack:
    """A ``LinearStack`` with random weights scaled so the stream stays O(1)."""
    rng = np.random.default_rng(seed)
    A = [rng.standard_normal((d_k, d)) / math.sqrt(d) for _ in range(layers)]
    W = [rng.standard_normal((d, d_k)) / math.sqrt(d_k * layers) for _ in range(layers)]
    return LinearStack(A, W, rng.standard_normal((d, n)), keys_from_input)
