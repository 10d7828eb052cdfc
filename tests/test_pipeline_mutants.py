"""The pipeline mutants (tests/pipeline_mutants.py) still fit the code: each snippet occurs
exactly once, each replacement changes it, names are unique and there are at least 30.
The mutants themselves run in ``nox -s mutation`` (tests/pipeline_mutation.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pipeline_mutants import MUTANTS, Mutant

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_snippet_occurs_exactly_once(mutant: Mutant) -> None:
    source = (REPO / mutant.file).read_text()
    assert source.count(mutant.snippet) == 1, (
        f"{mutant.name}: snippet found {source.count(mutant.snippet)} times in {mutant.file}"
    )
    assert mutant.replacement != mutant.snippet


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_selection_names_existing_test_files(mutant: Mutant) -> None:
    files = [a for a in mutant.selection if a.endswith(".py")]
    assert files, mutant.selection
    assert all((REPO / f).exists() for f in files), mutant.selection


def test_at_least_30_uniquely_named_mutants_across_the_pipeline() -> None:
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names)) >= 30
    areas = {m.area for m in MUTANTS}
    assert {
        "keys",
        "templates",
        "v*",
        "statistics",
        "editor",
        "metrics",
        "gates",
        "resume",
    } <= areas
