"""Hypothesis profiles: "ci" (default, derandomized) and "dev" (more examples, random).

Select with HYPOTHESIS_PROFILE=dev. The active profile and its seed policy are printed in the
pytest header; failures print a reproduction blob (print_blob) and each test's note()s.

The tests read the project's data from ``../shared/data`` next to the checkout unless
``ROME_DATA_DIR`` says otherwise (a user's install reads the user cache instead).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from rome_fast.methods.rome.variants import available_variants, unregister_variant

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=25,
    deadline=None,
    print_blob=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=300, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
os.environ.setdefault("ROME_DATA_DIR", str(SHARED_DATA))


def pytest_report_header() -> str:
    current = settings.default
    assert current is not None, "hypothesis has no settings profile loaded"
    seeds = (
        "derandomized (seed derived from each test)"
        if current.derandomize
        else "random (see blobs)"
    )
    profile = settings._current_profile
    return f"hypothesis profile: {profile}, max_examples={current.max_examples}, seeds {seeds}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Parallel sessions (``-n auto --dist loadgroup``) keep a file's tests on one worker, for
    its module fixtures, unless a test names a group of its own (the documented commands:
    one group per folder of commands run in order)."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Every variant a test registers (a user's, loaded from a spec) is removed after it."""
    before = set(available_variants())
    yield
    for name in set(available_variants()) - before:
        unregister_variant(name)
