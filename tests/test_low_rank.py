"""The method-independent update type: factors per site, any rank."""

from __future__ import annotations

import pytest
import torch

from rome_fast.solve.low_rank import Factors, SiteUpdate, Update
from rome_fast.solve.rank_one import RankOne


def test_factors_delta_is_the_sum_of_the_rank_one_terms() -> None:
    g = torch.Generator().manual_seed(0)
    left, right = torch.randn(5, 3, generator=g), torch.randn(4, 3, generator=g)
    expected = sum(torch.outer(left[:, i], right[:, i]) for i in range(3))
    torch.testing.assert_close(Factors(left, right).delta(), expected, rtol=0, atol=1e-6)
    assert Factors(left, right).rank == 3


def test_a_rank_one_update_is_factors_of_rank_one() -> None:
    g = torch.Generator().manual_seed(1)
    r = RankOne(torch.randn(5, generator=g), torch.randn(4, generator=g), torch.tensor(2.0))
    factors = Factors.from_rank_one(r)
    assert factors.rank == 1
    assert torch.equal(factors.delta(), r.delta())


def test_factors_of_different_ranks_are_refused() -> None:
    with pytest.raises(ValueError, match=r"same r"):
        Factors(torch.zeros(5, 2), torch.zeros(4, 3))


def test_an_update_finds_its_sites_and_refuses_a_module_written_twice() -> None:
    f = Factors(torch.zeros(2, 1), torch.zeros(3, 1))
    update = Update((SiteUpdate(4, "h.4.mlp", f), SiteUpdate(5, "h.5.mlp", f)))
    assert update.layers == (4, 5)
    assert update.at("h.5.mlp") is f
    with pytest.raises(KeyError, match=r"h\.6\.mlp"):
        update.at("h.6.mlp")
    with pytest.raises(ValueError, match="each module once"):
        Update((SiteUpdate(4, "h.4.mlp", f), SiteUpdate(4, "h.4.mlp", f)))
