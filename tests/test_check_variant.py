"""The variant table and check_variant: built-ins pass as registered (the battery's
properties of the built-ins are tested here), a wrong declaration fails, reports reproduce
their failures."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import settings

import rome_ref
from rome_fast.methods.rome.update import RankOne, UpdateInputs
from rome_fast.methods.rome.variants import (
    BUILTIN_KEYS,
    available_variants,
    get_variant,
    register_variant,
    unregister_variant,
)
from rome_fast.testing import MARGIN, PropertyFailure, VariantCheckError, check_variant
from tests.mutants import unit_u

# The built-ins get as many cases per property as the hypothesis profile gives a test (the
# properties' own tests they replace ran under it: 25 in CI, 300 with HYPOTHESIS_PROFILE=dev).
EXAMPLES = settings().max_examples


def test_reference_states_the_same_variant_table_as_the_registry() -> None:
    registered = {
        name: (get_variant(name).inserts_at, get_variant(name).direction_at)
        for name in BUILTIN_KEYS
    }
    assert registered == BUILTIN_KEYS == rome_ref.update.VARIANT_KEYS
    assert set(BUILTIN_KEYS) <= set(available_variants())


@pytest.mark.parametrize("name", ["r-rome", "p-rome"])
def test_rebuilt_variants_pass_every_property(name: str) -> None:
    report = check_variant(get_variant(name), max_examples=EXAMPLES)
    assert report.ok, str(report)
    assert {r.status for r in report.results if not r.name.startswith("misses_")} == {"passed"}


def test_original_is_checked_as_what_it_does_and_misses_k_star() -> None:
    report = check_variant(get_variant("rome"), max_examples=EXAMPLES)
    assert report.ok, str(report)
    assert (report.inserts_at, report.direction_at) == ("k_prompt", "k_star")
    statuses = {r.name: r.status for r in report.results}
    assert statuses.pop("minimality") == "skipped"
    assert statuses.pop("misses_k_star") == "noted"
    assert set(statuses.values()) == {"passed"}, str(report)
    text = str(report)
    assert "inserts at k_prompt, direction C⁻¹k_star" in text
    assert "misses k_star: ‖Ŵ k_star − v*‖/‖v*‖ = " in text


def test_r_rome_notes_that_it_misses_k_prompt() -> None:
    report = check_variant(get_variant("r-rome"), max_examples=5)
    row = next(r for r in report.results if r.name == "misses_k_prompt")
    assert row.status == "noted"
    assert row.message.startswith("misses k_prompt:"), str(report)


def test_float32_check_of_r_rome_passes() -> None:
    report = check_variant(get_variant("r-rome"), dtype=torch.float32, max_examples=20)
    assert report.ok, str(report)


def test_passed_rows_state_the_worst_value_its_floor_and_bound() -> None:
    report = check_variant(get_variant("p-rome"), dtype=torch.float32, max_examples=5)
    numeric = [r for r in report.results if r.name not in ("finite", "rank_one")]
    for row in numeric[:-1]:  # the last row is the noted miss at the other key
        value, floor, bound = (
            float(x)
            for x in re.findall(
                r"worst of 5 cases: (\S+) \(floor (\S+), bound (\S+) =", row.message
            )[0]
        )
        assert floor >= 0.99 * torch.finfo(torch.float32).eps, row.message  # printed to 3 digits
        assert bound == pytest.approx(MARGIN * floor, rel=1e-2), row.message
        assert value <= bound, row.message


def test_original_declared_at_k_star_fails_and_reproduces() -> None:
    my_variant = get_variant("rome")
    report = check_variant(my_variant, inserts_at="k_star", max_examples=20)
    assert "exact_insertion" in report.failed
    failure = next(r for r in report.results if r.name == "exact_insertion")
    assert failure.params is not None
    text = str(report)
    assert "exact_insertion    failed" in text
    # the failure states its value, the floor measured on its case and the bound
    stated = rf"= \S+ \(floor \S+, bound \S+ = {MARGIN:g} × floor; value/floor \S+\)"
    assert re.search(stated, failure.message), failure.message
    assert failure.reproducer in text
    snippet = failure.reproducer.removeprefix("reproduce with:\n")
    with pytest.raises(PropertyFailure, match=r"‖Ŵ k_star \+ b − v\*‖"):
        exec(snippet, {})  # self-contained: its own imports, the variant written from its data
    with pytest.raises(VariantCheckError, match="exact_insertion"):
        report.raise_if_failed()


def test_registered_user_variant_is_checked_with_its_metadata() -> None:
    # the public code normalizes u to unit length; that must not change anything
    entry = register_variant("unit-u", unit_u, inserts_at="k_star")
    try:
        assert entry.direction_at == "k_star"  # defaults to the insert key
        report = check_variant(entry, max_examples=15)
        assert report.name == "unit-u"
        assert (report.inserts_at, report.direction_at) == ("k_star", "k_star")
        assert report.ok, str(report)
    finally:
        unregister_variant("unit-u")


def test_registry_rejects_duplicates_and_bad_metadata() -> None:
    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        register_variant("r-rome", get_variant("r-rome").fn, inserts_at="k_star")
    with pytest.raises(ValueError, match="inserts_at must be one of"):
        register_variant("x", get_variant("r-rome").fn, inserts_at="k_value")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="direction_at must be one of"):
        register_variant("x", get_variant("r-rome").fn, inserts_at="k_star", direction_at="u")  # type: ignore[arg-type]
    assert "x" not in available_variants()


def test_a_variant_that_raises_is_reported_not_crashed() -> None:
    def broken(_inp: UpdateInputs) -> RankOne:
        raise RuntimeError("not implemented")

    report = check_variant(broken, max_examples=3, shrink=False)
    assert not report.ok
    row = next(r for r in report.results if r.name == "misses_k_prompt")
    assert row.status == "noted"
    assert row.message == "not measured: not implemented"
