"""Hypothesis profiles: "ci" (default, derandomized) and "dev" (more examples, random).

Select with HYPOTHESIS_PROFILE=dev. The active profile and its seed policy are printed in the
pytest header; failures print a reproduction blob (print_blob) and each test's note()s.

The tests read only the clone: ``ROME_DATA_DIR`` defaults to the samples committed in
``fixtures/data`` (fixtures/README.md). No test of the default suite may skip for missing data
(:func:`pytest_sessionfinish` fails the run if one does). Tests of third-party code under test
(marker ``anchors``) run where it is present and are otherwise one reported group skip.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from rome_fast.infra.datadir import DATA_ENV
from rome_fast.methods.rome.variants import available_variants, unregister_variant
from tests.anchors import ANCHORS_ENV, anchors_present, anchors_root

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

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DATA = REPO / "fixtures" / "data"  # counterfact/, zsre/, glue/: a data folder's layout
# Beside the data folder, not in it: a wikitext-2/ there would become SmolLM2's corpus for C.
FIXTURE_WIKITEXT = REPO / "fixtures" / "wikitext-2"
os.environ.setdefault(DATA_ENV, str(FIXTURE_DATA))
# A skip whose reason names the data folder's variable: the suite lacks a sample it needs.
MISSING_DATA = re.compile(DATA_ENV)


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Parallel sessions (``-n auto --dist loadgroup``) keep a file's tests on one worker, for
    its module fixtures, unless a test names a group of its own (the documented commands:
    one group per folder of commands run in order). Without the third-party code, its tests
    leave the run as one group skip."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    if not anchors_present():
        group_skip([item for item in items if item.get_closest_marker("anchors")], config, items)


def group_skip(needing: list[pytest.Item], config: pytest.Config, items: list[pytest.Item]) -> None:
    """The first test of ``needing`` stays, skipped with the reason for all; the rest are
    deselected (one line in the report instead of one skip or error each)."""
    if not needing:
        return
    needing[0].add_marker(
        pytest.mark.skip(
            reason=f"{len(needing)} tests of third-party code under test (marker anchors): "
            f"no checkouts at {anchors_root()}; set {ANCHORS_ENV} to the folder holding "
            f"rebuilding-rome/ and easyedit/ ({len(needing) - 1} more deselected)"
        )
    )
    rest = set(needing[1:])
    config.hook.pytest_deselected(items=needing[1:])
    items[:] = [item for item in items if item not in rest]


_data_skips: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Records each skip that names the data folder (xdist sends workers' reports here)."""
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if MISSING_DATA.search(reason):
            _data_skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A skip for missing data fails the run: the suite's data are committed in fixtures/."""
    if _data_skips:
        print("\ntests skipped for missing data (commit the sample in fixtures/data):")
        print("\n".join(_data_skips))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Every variant a test registers (a user's, loaded from a spec) is removed after it."""
    before = set(available_variants())
    yield
    for name in set(available_variants()) - before:
        unregister_variant(name)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread, as in each worker of a run (one CPU each): tiny models only lose
    from intra-op threads, and a run's records equal its workers' only on the same count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
