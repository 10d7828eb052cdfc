"""What an edit writes, for any method: low-rank factors per edited site.

ROME writes one rank-one term at one layer; MEMIT, EMMET and AlphaEdit write a term of rank up
to n (the batch) at each of several layers. One type holds both, so that results, the edit log,
the guard and revert/restore are written once for every method.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from rome_fast.solve.rank_one import RankOne


@dataclass(frozen=True)
class Factors:
    """``ΔW = left @ rightᵀ`` at one site: ``left`` (d_out, r), ``right`` (d_in, r)."""

    left: Tensor
    right: Tensor

    def __post_init__(self) -> None:
        if self.left.ndim != 2 or self.right.ndim != 2 or self.left.shape[1] != self.right.shape[1]:
            raise ValueError(
                "factors must be (d_out, r) and (d_in, r) with the same r, got "
                f"{tuple(self.left.shape)} and {tuple(self.right.shape)}"
            )

    @classmethod
    def from_rank_one(cls, r: RankOne) -> Factors:
        return cls(r.left[:, None], r.right[:, None])

    @property
    def rank(self) -> int:
        """The number of terms (an upper bound of rank(ΔW))."""
        return int(self.left.shape[1])

    def delta(self) -> Tensor:
        """The dense ΔW, (d_out, d_in)."""
        return self.left @ self.right.mT

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Factors:
        return Factors(
            self.left.to(device=device, dtype=dtype), self.right.to(device=device, dtype=dtype)
        )


@dataclass(frozen=True)
class SiteUpdate:
    """The factors written at one edited module (``layer``, ``module_name``)."""

    layer: int
    module_name: str
    factors: Factors


@dataclass(frozen=True)
class Update:
    """A whole edit: the sites in the order they were written (reverting goes backwards)."""

    sites: tuple[SiteUpdate, ...]

    def __post_init__(self) -> None:
        names = [site.module_name for site in self.sites]
        if len(set(names)) != len(names):
            raise ValueError(f"an update writes each module once, got {names}")

    def __iter__(self) -> Iterator[SiteUpdate]:
        return iter(self.sites)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(site.layer for site in self.sites)

    def at(self, module_name: str) -> Factors:
        """The factors written at ``module_name``; KeyError naming the edited modules if none."""
        for site in self.sites:
            if site.module_name == module_name:
                return site.factors
        raise KeyError(
            f"{module_name!r} is not edited by this update (it edits "
            f"{[site.module_name for site in self.sites]})"
        )
