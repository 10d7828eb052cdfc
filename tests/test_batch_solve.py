"""The torch batched solves against rome_ref.batched, their conditioning report, refusals and
hyperparameters.

Tolerance: 16 ε(dtype) κ, κ the condition number of the system each form solves (as in the
battery); measured at most 1.46 ε κ in float32 and 1.75 ε κ in float64
(docs/results/batched-solve.md), so 16 leaves 9× headroom.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from rome_fast.methods.alphaedit.update import PUBLIC as ALPHAEDIT_PUBLIC
from rome_fast.methods.alphaedit.update import AlphaEditHParams, NullSpaceLayer
from rome_fast.methods.emmet.update import PUBLIC as EMMET_PUBLIC
from rome_fast.methods.emmet.update import EmmetHParams, emmet_covariance, emmet_factors
from rome_fast.methods.memit.update import PUBLIC as MEMIT_PUBLIC
from rome_fast.methods.memit.update import MemitHParams, memit_factors
from rome_fast.solve.batch import SingularBatchError
from rome_fast.solve.rank_one import CovarianceFactor
from rome_fast.testing_batch.battery import null_threshold
from rome_fast.testing_batch.cases import Batch, BatchParams, make_batch
from rome_ref import batched as rb
from tests import batch_strategies as bs
from tests.anchors import checkout
from tests.batch_strategies import alphaedit_kappa, emmet_kappa, memit_kappa

MARGIN = 16
DTYPES = {"float64": (torch.float64, bs.batches, bs.null_space_batches)}
DTYPES["float32"] = (torch.float32, bs.low_precision_batches, bs.low_precision_null_space_batches)


def t(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


def rel(fast: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.linalg.norm(fast.double().numpy() - ref) / np.linalg.norm(ref))


def memit_delta(b: Batch, lam: float, dtype: torch.dtype) -> torch.Tensor:
    cov = CovarianceFactor.from_matrix(t(b.C, dtype), dtype=dtype)
    hparams = MemitHParams(layers=(0,), mom2_update_weight=lam)
    return memit_factors(cov, t(b.K, dtype), t(b.residuals(), dtype), hparams)[0].delta()


def emmet_delta(b: Batch, hparams: EmmetHParams, dtype: torch.dtype) -> torch.Tensor:
    cov = emmet_covariance(t(b.C, dtype), hparams, dtype=dtype)
    return emmet_factors(cov, t(b.K, dtype), t(b.residuals(), dtype), hparams)[0].delta()


@pytest.mark.parametrize("precision", sorted(DTYPES))
def test_memit_agrees_with_the_reference(precision: str) -> None:
    dtype, batches, _ = DTYPES[precision]

    @settings(max_examples=40, deadline=None)
    @given(batches, bs.lambdas)
    def check(p: BatchParams, lam: float) -> None:
        b = make_batch(p)
        error = rel(memit_delta(b, lam, dtype), rb.memit_delta(b.C, b.K, b.residuals(), lam))
        assert error <= MARGIN * torch.finfo(dtype).eps * memit_kappa(b, lam)

    check()


@pytest.mark.parametrize("precision", sorted(DTYPES))
def test_emmet_agrees_with_the_reference(precision: str) -> None:
    dtype, batches, _ = DTYPES[precision]

    @settings(max_examples=40, deadline=None)
    @given(batches, bs.lambdas, bs.emmet_lambdas, bs.lambdas)
    def check(p: BatchParams, lam_m: float, lam_e: float, lam_u: float) -> None:
        b = make_batch(p)
        hparams = EmmetHParams((0,), lam_m, lam_e, lam_u)
        ref = rb.emmet_delta(b.C, b.K, b.residuals(), lam_m, lam_e, lam_u)
        # C' = λₘC + λᵤI is better conditioned than λₘC: κ(C) bounds both
        assert rel(emmet_delta(b, hparams, dtype), ref) <= MARGIN * torch.finfo(
            dtype
        ).eps * emmet_kappa(b, lam_m, lam_e)

    check()


@pytest.mark.parametrize("precision", sorted(DTYPES))
def test_alphaedit_agrees_with_the_reference(precision: str) -> None:
    dtype, _, null_batches = DTYPES[precision]

    @settings(max_examples=40, deadline=None)
    @given(null_batches, bs.alphas)
    def check(p: BatchParams, alpha: float) -> None:
        b = make_batch(p)
        hparams = AlphaEditHParams((0,), nullspace_threshold=null_threshold(b), L2=alpha)
        layer = NullSpaceLayer.from_covariance(t(b.C, dtype), hparams, dtype=dtype)
        fast = layer.factors(t(b.K, dtype), t(b.residuals(), dtype), hparams)[0].delta()
        P = rb.null_space_projector(b.C, null_threshold(b))
        ref = rb.alphaedit_delta(P, b.K, b.residuals(), alpha)
        assert rel(fast, ref) <= MARGIN * torch.finfo(dtype).eps * alphaedit_kappa(b, alpha)

    check()


def test_alphaedit_remembers_every_earlier_batch() -> None:
    """Two batches remembered one after the other = both remembered at once."""
    b = make_batch(BatchParams(2, 12, 5, 6, 1.0, 0.3, null_dim=8, with_bias=False))
    hparams = AlphaEditHParams((0,), nullspace_threshold=null_threshold(b), L2=1.0)
    C, K = torch.tensor(b.C), torch.tensor(b.K)
    one_by_one = NullSpaceLayer.from_covariance(C, hparams)
    one_by_one.remember(K[:, :2])
    one_by_one.remember(K[:, 2:4])
    at_once = NullSpaceLayer.from_covariance(C, hparams)
    at_once.remember(K[:, :4])
    R = torch.tensor(b.residuals()[:, 4:])
    by_steps = one_by_one.factors(K[:, 4:], R, hparams)[0].delta()
    together = at_once.factors(K[:, 4:], R, hparams)[0].delta()
    # the same sums in another order: measured 7e-18 relative (replacing instead of adding:
    # 1.2e-2); 64 ε
    assert torch.linalg.norm(by_steps - together) <= 64 * 2.2e-16 * torch.linalg.norm(together)


def test_the_conditioning_is_reported() -> None:
    b = make_batch(BatchParams(4, 10, 6, 5, 2.0, 1.0, null_dim=0, with_bias=False))
    hparams = EmmetHParams((0,), 1.0, 0.5)
    cov = emmet_covariance(torch.tensor(b.C), hparams)
    _, conditioning = emmet_factors(cov, torch.tensor(b.K), torch.tensor(b.residuals()), hparams)
    gram = np.linalg.eigvalsh(b.K.T @ np.linalg.solve(b.C, b.K))
    assert conditioning.gram_min == pytest.approx(gram[0], rel=1e-10)
    assert conditioning.gram_max == pytest.approx(gram[-1], rel=1e-10)
    assert conditioning.system_cond == pytest.approx((gram[-1] + 0.5) / (gram[0] + 0.5), rel=1e-10)


def test_emmet_refuses_one_subject_with_two_targets_naming_them() -> None:
    b = make_batch(BatchParams(5, 10, 7, 5, 1.0, 0.3, null_dim=0, with_bias=False))
    K = torch.tensor(b.K)
    K[:, 4] = K[:, 2]
    hparams = EmmetHParams((0,), 1e4, 0.0)
    cov = emmet_covariance(torch.tensor(b.C), hparams)
    with pytest.raises(SingularBatchError, match="facts 2 and 4"):
        emmet_factors(cov, K, torch.tensor(b.V), hparams)
    factors, _ = emmet_factors(cov, K, torch.tensor(b.V), EmmetHParams((0,), 1e4, 0.1))
    assert bool(torch.isfinite(factors.left).all())


def test_a_covariance_without_null_space_is_refused() -> None:
    with pytest.raises(ValueError, match="no eigenvalue below nullspace_threshold"):
        NullSpaceLayer.from_covariance(torch.eye(4), AlphaEditHParams((0,), 0.5, 1.0))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MemitHParams(layers=()), "layers must be distinct"),
        (lambda: MemitHParams(layers=(5, 3)), "increasing order"),
        (lambda: MemitHParams(mom2_update_weight=0.0), "mom2_update_weight must be"),
        (lambda: EmmetHParams(emmet_lambda=-0.1), "emmet_lambda must be a finite number ≥ 0"),
        (lambda: AlphaEditHParams(L2=float("nan")), "L2 must be a finite number > 0"),
    ],
)
def test_bad_hyperparameters_are_refused(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


PUBLIC_FILES: dict[str, tuple[Mapping[str, Any], tuple[str, ...]]] = {
    "MEMIT": (MEMIT_PUBLIC, ("mom2_update_weight",)),
    "EMMET": (EMMET_PUBLIC, ("mom2_update_weight", "emmet_lambda", "update_norm_lambda")),
    "AlphaEdit": (ALPHAEDIT_PUBLIC, ("nullspace_threshold", "L2")),
}


@pytest.mark.anchors
@pytest.mark.parametrize("method", sorted(PUBLIC_FILES))
def test_the_public_tables_hold_easyedits_values(method: str) -> None:
    """Each ``PUBLIC`` entry against EasyEdit's yaml of the same name, field by field."""
    import yaml

    table, fields = PUBLIC_FILES[method]
    folder = checkout("easyedit") / "hparams" / method
    paths = {name: folder / f"{name}.yaml" for name in table}
    for name, hparams in table.items():
        raw = yaml.safe_load(paths[name].read_text())
        assert hparams.layers == tuple(raw["layers"]), name
        for field in fields:
            assert getattr(hparams, field) == float(raw[field]), (name, field)


def test_the_defaults_are_the_gpt_j_files() -> None:
    assert MemitHParams() == MEMIT_PUBLIC["gpt-j-6B"]
    assert EmmetHParams() == EMMET_PUBLIC["gpt-j-6B"]
    assert AlphaEditHParams() == ALPHAEDIT_PUBLIC["gpt-j-6B"]
