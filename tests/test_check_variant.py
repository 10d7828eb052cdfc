"""check_variant: built-ins pass, a wrong declaration fails, reports reproduce their failures."""

from __future__ import annotations

import pytest
import torch

from rome_fast.testing import PropertyFailure, VariantCheckError, check_variant
from rome_fast.update import RankOne, UpdateInputs, insertion_update
from rome_fast.variants import get_variant, register_variant, unregister_variant


@pytest.mark.parametrize("name", ["r-rome", "p-rome"])
def test_rebuilt_variants_pass_every_property(name: str) -> None:
    report = check_variant(get_variant(name), max_examples=20)
    assert report.ok, str(report)
    assert all(r.status == "passed" for r in report.results)


def test_original_passes_as_a_mixed_key_insertion_at_k_prompt() -> None:
    report = check_variant(get_variant("rome"), direction_at="k_star", max_examples=20)
    assert report.ok, str(report)
    skipped = [r.name for r in report.results if r.status == "skipped"]
    assert skipped == ["minimality"]


def test_float32_check_of_r_rome_passes() -> None:
    report = check_variant(get_variant("r-rome"), dtype=torch.float32, max_examples=20)
    assert report.ok, str(report)


def test_original_declared_at_k_star_fails_and_reproduces() -> None:
    my_variant = get_variant("rome")
    report = check_variant(my_variant, inserts_at="k_star", max_examples=20)
    assert "exact_insertion" in report.failed
    failure = next(r for r in report.results if r.name == "exact_insertion")
    assert failure.params is not None
    text = str(report)
    assert "exact_insertion    failed" in text
    assert failure.reproducer in text
    with pytest.raises(PropertyFailure, match=r"‖Ŵ k_star \+ b − v\*‖"):
        exec(failure.reproducer, {"my_variant": my_variant})
    with pytest.raises(VariantCheckError, match="exact_insertion"):
        report.raise_if_failed()


def test_registered_user_variant_is_checked_with_its_metadata() -> None:
    def unit_u(inp: UpdateInputs) -> RankOne:
        # the public code normalizes u to unit length; that must not change anything
        r = insertion_update(inp, inp.k_star, inp.k_star)
        scale = torch.linalg.norm(r.right)
        return RankOne(r.left * scale, r.right / scale, r.denominator)

    entry = register_variant("unit-u", unit_u, inserts_at="k_star")
    try:
        report = check_variant(entry, max_examples=15)
        assert report.name == "unit-u"
        assert report.inserts_at == "k_star"
        assert report.ok, str(report)
    finally:
        unregister_variant("unit-u")


def test_registry_rejects_duplicates_and_bad_metadata() -> None:
    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        register_variant("r-rome", get_variant("r-rome").fn, inserts_at="k_star")
    with pytest.raises(ValueError, match="inserts_at must be one of"):
        register_variant("x", get_variant("r-rome").fn, inserts_at="k_value")  # type: ignore[arg-type]
