"""The batched battery passes this package's solves and catches every mutant in
tests/batch_mutants.py by the property that targets it."""

from __future__ import annotations

import re

import pytest
import torch

from rome_fast.testing import BatchedMethod, check_batched, run_batched_property
from rome_fast.testing_batch.battery import MARGIN, PROPERTIES, PropertyFailure
from rome_fast.testing_batch.ours import OURS
from tests.batch_mutants import MUTANTS

MAX_EXAMPLES = 20  # every mutant is caught well within this; unshrunk for speed


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_our_solves_pass_the_battery(dtype: torch.dtype) -> None:
    report = check_batched(OURS, name="ours", max_examples=40, dtype=dtype)
    assert report.ok, str(report)
    assert not [r for r in report.results if r.status == "skipped"], str(report)


def test_passed_rows_state_the_worst_value_its_floor_and_bound() -> None:
    report = check_batched(OURS, max_examples=5, dtype=torch.float32, only=["push_through"])
    (row,) = report.results
    value, floor, bound = (
        float(x)
        for x in re.findall(r"worst of 5 cases: (\S+) \(floor (\S+), bound (\S+) =", row.message)[0]
    )
    assert floor >= 0.99 * torch.finfo(torch.float32).eps, row.message  # printed to 3 digits
    assert bound == pytest.approx(MARGIN * floor, rel=1e-2), row.message
    assert value <= bound, row.message


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_the_battery_catches_mutant(name: str) -> None:
    mutant = MUTANTS[name]
    report = check_batched(
        mutant.method, name=name, max_examples=MAX_EXAMPLES, shrink=False, only=[mutant.caught_by]
    )
    assert report.failed == (mutant.caught_by,), str(report)


def test_every_property_has_a_mutant_but_finite() -> None:
    targeted = {mutant.caught_by for mutant in MUTANTS.values()}
    assert set(PROPERTIES) - targeted == {"finite"}


def test_a_failure_comes_with_a_reproducer_that_fails() -> None:
    mutant = MUTANTS["memit_lambda_wrong_side"]
    report = check_batched(mutant.method, max_examples=MAX_EXAMPLES, only=["normal_equations"])
    (result,) = report.results
    assert result.params is not None
    assert 'run_batched_property("normal_equations", my_method, BatchParams(' in result.reproducer
    with pytest.raises(PropertyFailure):
        run_batched_property("normal_equations", mutant.method, result.params)
    run_batched_property("normal_equations", OURS, result.params)


def test_a_missing_solve_skips_its_properties() -> None:
    report = check_batched(BatchedMethod(memit=OURS.memit), max_examples=5, only=["sequential"])
    assert [r.status for r in report.results] == ["skipped"]


def test_unknown_property_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown properties"):
        check_batched(OURS, only=["normal_equation"])
