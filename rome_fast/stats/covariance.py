"""Where an editor's key second moment C comes from: the statistics policy.

A covariance is a Tensor (d_in, d_in) or a ``CovarianceFactor``; a provider computes one for a
``(loaded, layer)``. ``default_covariance`` turns the hyperparameters (and a user's
``StatsSource``) into a provider.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rome_fast.hparams.defaults import HParams, StatsOptions
from rome_fast.methods.rome.update import CovarianceFactor
from rome_fast.model.loader import LoadedModel
from rome_fast.stats.corpus import Corpus

if TYPE_CHECKING:
    from rome_fast.stats.collect import SecondMomentStats

Covariance = Tensor | CovarianceFactor
CovarianceProvider = Callable[[LoadedModel, int], Covariance]


@dataclass(frozen=True)
class StatsSource:
    """Where a user's C comes from instead of the default corpus: a corpus, a public ``.npz``
    file, a sample count, and how missing statistics are collected (e.g. sharded over Ray).
    What C is collected with (document count, length, dtype) is ``HParams.stats``."""

    corpus: Corpus | None = None
    npz_path: str | Path | None = None
    n_samples: int | None = None  # None: ``HParams.stats.n_samples``
    collect: Callable[..., SecondMomentStats] | None = None

    @property
    def given(self) -> bool:
        """Whether the user chose a corpus, a file or a sample count."""
        return self.corpus is not None or self.npz_path is not None or self.n_samples is not None


def default_covariance(hparams: HParams, source: StatsSource = StatsSource()) -> CovarianceProvider:
    """C from ``rome_fast.stats.collect.layer_second_moment`` with ``hparams.stats`` and the
    user's ``source``. With ``hparams.mom2_adjustment`` off, C is the identity (the public code
    then skips C⁻¹)."""
    if not hparams.mom2_adjustment:
        if source.given:
            raise ValueError(
                "mom2_adjustment is off (C = I), so statistics options (a corpus, a file, a "
                "sample count) would be ignored: drop them or set mom2_adjustment to true"
            )
        return _identity_covariance
    options = statistics_options(hparams.stats, source)

    def provider(loaded: LoadedModel, layer: int) -> Covariance:
        from rome_fast.stats.collect import layer_second_moment

        return layer_second_moment(loaded, layer, **options)

    return provider


def statistics_options(stats: StatsOptions, source: StatsSource) -> dict[str, Any]:
    """The keyword arguments of ``stats.layer_stats`` and ``stats.layer_second_moment`` for
    ``stats`` and a user's ``source`` (the sample count: the user's, else ``stats``');
    ``rome stats`` and every editor's C read the same statistics."""
    if source.n_samples is not None and source.n_samples < 1:
        raise ValueError(
            f"the statistics need at least one document, got n_samples={source.n_samples}"
        )
    return {
        "corpus": source.corpus,
        "npz_path": source.npz_path,
        "n_samples": stats.n_samples if source.n_samples is None else source.n_samples,
        "max_length": stats.max_length,
        "dtype": getattr(torch, stats.dtype),
        "collect": source.collect,
    }


def _identity_covariance(loaded: LoadedModel, layer: int) -> Covariance:
    d_in = loaded.adapter.edited_site(loaded.model, layer).d_in
    return torch.eye(d_in, dtype=torch.float32)
