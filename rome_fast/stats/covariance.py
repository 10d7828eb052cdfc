"""Where an editor's key second moment C comes from: the statistics policy.

A covariance is a Tensor (d_in, d_in) or a ``CovarianceFactor``; a provider computes one for a
``(loaded, layer)``. ``default_covariance`` turns the hyperparameters (and a user's statistics
options) into a provider.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rome_fast.hparams.defaults import HParams
from rome_fast.methods.rome.update import CovarianceFactor
from rome_fast.model.loader import LoadedModel
from rome_fast.stats.corpus import Corpus

if TYPE_CHECKING:
    from rome_fast.stats.collect import SecondMomentStats

Covariance = Tensor | CovarianceFactor
CovarianceProvider = Callable[[LoadedModel, int], Covariance]


def default_covariance(
    hparams: HParams,
    *,
    corpus: Corpus | None = None,
    npz_path: str | Path | None = None,
    n_samples: int | None = None,
    collect: Callable[..., SecondMomentStats] | None = None,
) -> CovarianceProvider:
    """C from ``rome_fast.stats.collect.layer_second_moment`` with ``hparams``' sample count,
    document length and dtype, unless a corpus, a sample count or a public ``.npz`` file is given.
    With ``hparams.mom2_adjustment`` off, C is the identity (the public code then skips C⁻¹).
    ``collect`` computes C when it is not cached (e.g. sharded over Ray actors)."""
    if not hparams.mom2_adjustment:
        if corpus is not None or npz_path is not None or n_samples is not None:
            raise ValueError(
                "mom2_adjustment is off (C = I), so statistics options (a corpus, a file, a "
                "sample count) would be ignored: drop them or set mom2_adjustment to true"
            )
        return _identity_covariance
    options = statistics_options(
        hparams, corpus=corpus, npz_path=npz_path, n_samples=n_samples, collect=collect
    )

    def provider(loaded: LoadedModel, layer: int) -> Covariance:
        from rome_fast.stats.collect import layer_second_moment

        return layer_second_moment(loaded, layer, **options)

    return provider


def statistics_options(
    hparams: HParams,
    *,
    corpus: Corpus | None = None,
    npz_path: str | Path | None = None,
    n_samples: int | None = None,
    collect: Callable[..., SecondMomentStats] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``stats.layer_stats`` and ``stats.layer_second_moment`` for
    ``hparams`` and a user's statistics options (the sample count: the user's, else
    ``hparams``'); ``rome stats`` and every editor's C read the same statistics."""
    if n_samples is not None and n_samples < 1:
        raise ValueError(f"the statistics need at least one document, got n_samples={n_samples}")
    return {
        "corpus": corpus,
        "npz_path": npz_path,
        "n_samples": hparams.mom2_n_samples if n_samples is None else n_samples,
        "max_length": hparams.mom2_max_length,
        "dtype": getattr(torch, hparams.mom2_dtype),
        "collect": collect,
    }


def _identity_covariance(loaded: LoadedModel, layer: int) -> Covariance:
    d_in = loaded.adapter.edited_site(loaded.model, layer).d_in
    return torch.eye(d_in, dtype=torch.float32)
