"""This package's solves in the battery's signatures (``BatchedMethod``): what
``check_batched(OURS)`` checks, and what the mutants in the tests are near-copies of."""

from __future__ import annotations

from torch import Tensor

from rome_fast.methods.alphaedit.update import AlphaEditHParams, NullSpaceLayer
from rome_fast.methods.emmet.update import EmmetHParams, emmet_covariance, emmet_factors
from rome_fast.methods.memit.update import MemitHParams, memit_factors
from rome_fast.solve.low_rank import Factors
from rome_fast.solve.rank_one import CovarianceFactor
from rome_fast.solve.schedule import spread_over_layers
from rome_fast.testing_batch.battery import BatchedMethod

ONE_LAYER = (0,)  # the solves are per layer; the layer list only matters to the schedule


def memit(C: Tensor, K: Tensor, R: Tensor, lam: float) -> Factors:
    hparams = MemitHParams(layers=ONE_LAYER, mom2_update_weight=lam)
    return memit_factors(CovarianceFactor.from_matrix(C, dtype=C.dtype), K, R, hparams)[0]


def emmet(C: Tensor, K: Tensor, R: Tensor, lam_m: float, lam_e: float) -> Factors:
    hparams = EmmetHParams(layers=ONE_LAYER, mom2_update_weight=lam_m, emmet_lambda=lam_e)
    return emmet_factors(emmet_covariance(C, hparams, dtype=C.dtype), K, R, hparams)[0]


def alphaedit(
    C: Tensor, K: Tensor, R: Tensor, threshold: float, alpha: float, earlier_keys: Tensor | None
) -> Factors:
    hparams = AlphaEditHParams(layers=ONE_LAYER, nullspace_threshold=threshold, L2=alpha)
    layer = NullSpaceLayer.from_covariance(C, hparams, dtype=C.dtype)
    if earlier_keys is not None:
        layer.remember(earlier_keys)
    return layer.factors(K, R, hparams)[0]


OURS = BatchedMethod(memit=memit, emmet=emmet, alphaedit=alphaedit, schedule=spread_over_layers)
