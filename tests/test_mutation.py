"""The battery must fail on every mutant in tests/mutants.py (and pass on the correct code).

Run with ``-s`` to see the table "mutant -> caught by which properties".
"""

from __future__ import annotations

from functools import cache

import pytest
import torch

from rome_fast.testing import VariantReport, check_update, variant_update
from tests.mutants import (
    APPLY_MUTANTS,
    CORRECT_ALTERNATIVES,
    CORRECT_UPDATE,
    PRECISION_MUTANTS,
    UPDATE_MUTANTS,
)
from tests.test_weights import assert_output_moves_by_delta, make_module, random_rank_one

MAX_EXAMPLES = 20  # every mutant is caught well within this; unshrunk for speed


@cache
def report(name: str) -> VariantReport:
    update = CORRECT_UPDATE if name == "correct r-rome" else UPDATE_MUTANTS[name]
    return check_update(
        update, inserts_at="k_star", name=name, max_examples=MAX_EXAMPLES, shrink=False
    )


def apply_failures(apply) -> list[str]:  # type: ignore[no-untyped-def]
    """The orientation property on each module type and shape; returns the failing settings."""
    failed = []
    for kind in ("conv1d", "linear"):
        for d_out, d_in in ((3, 5), (4, 4)):
            module = make_module(kind, d_out, d_in, torch.float32)
            try:
                assert_output_moves_by_delta(module, random_rank_one(d_out, d_in), apply)
            except (AssertionError, RuntimeError):
                failed.append(f"output_moves_by_delta[{kind} {d_out}x{d_in}]")
    return failed


def test_correct_update_passes_the_battery() -> None:
    assert report("correct r-rome").ok, str(report("correct r-rome"))


@pytest.mark.parametrize("name", sorted(UPDATE_MUTANTS))
def test_battery_catches_update_mutant(name: str) -> None:
    result = report(name)
    assert not result.ok, f"mutant {name} passed every property:\n{result}"


DTYPES = {"float64": torch.float64, "float32": torch.float32}


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("name", sorted(CORRECT_ALTERNATIVES))
def test_correct_updates_computed_otherwise_pass(name: str, dtype: str) -> None:
    """Correct r-ROME whose rounding differs from the floor's computations stays within
    MARGIN × floor (docs/results/check-variant-bounds.md)."""
    update = variant_update(CORRECT_ALTERNATIVES[name])
    result = check_update(
        update, inserts_at="k_star", name=name, max_examples=MAX_EXAMPLES, dtype=DTYPES[dtype]
    )
    assert result.ok, str(result)


@pytest.mark.parametrize("name", sorted(PRECISION_MUTANTS))
def test_float32_battery_catches_precision_mutant(name: str) -> None:
    """An error of 0.5% or of bfloat16 rounding is far above a float32 floor."""
    result = check_update(
        UPDATE_MUTANTS[name],
        inserts_at="k_star",
        name=name,
        max_examples=MAX_EXAMPLES,
        dtype=torch.float32,
        shrink=False,
    )
    assert "exact_insertion" in result.failed, str(result)


@pytest.mark.parametrize("name", sorted(APPLY_MUTANTS))
def test_orientation_property_catches_apply_mutant(name: str) -> None:
    assert apply_failures(APPLY_MUTANTS[name]), f"{name} passed the orientation property"


def test_print_mutation_table() -> None:
    rows = [(name, ", ".join(report(name).failed) or "NOTHING") for name in sorted(UPDATE_MUTANTS)]
    rows += [
        (name, ", ".join(apply_failures(fn)) or "NOTHING")
        for name, fn in sorted(APPLY_MUTANTS.items())
    ]
    width = max(len(name) for name, _ in rows)
    print("\nmutant -> caught by")
    for name, caught in rows:
        print(f"  {name:<{width}} -> {caught}")
    assert all(caught != "NOTHING" for _, caught in rows)
