"""The suite runs from the clone alone: a data skip fails the run, third-party code is one
group skip, and the data files the suite names are committed (fixtures/README.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURE_DATA, REPO

# A stand-in suite: its conftest takes the project's hooks, nothing else.
CONFTEST = """
from tests.conftest import (
    pytest_collection_modifyitems,
    pytest_runtest_logreport,
    pytest_sessionfinish,
)
"""
DATA_SKIP = """
import pytest

def test_data() -> None:
    pytest.skip("counterfact/x.json not found; set ROME_DATA_DIR")

def test_other() -> None:
    pytest.skip("this CPU has no bfloat16 instructions")
"""
THIRD_PARTY = """
import pytest

@pytest.mark.anchors
def test_public_one() -> None:
    pass

@pytest.mark.anchors
def test_public_two() -> None:
    pass

def test_ours() -> None:
    pass
"""


def run_suite(tmp_path: Path, source: str, anchors: Path) -> subprocess.CompletedProcess[str]:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "test_stand_in.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": str(REPO), "ROME_ANCHORS_DIR": str(anchors)}
    command = [sys.executable, "-m", "pytest", str(suite), "-p", "no:cacheprovider", "-rs"]
    command += ["-o", "markers=anchors: third-party code", "--rootdir", str(suite)]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False)


def test_a_skip_for_missing_data_fails_the_run(tmp_path: Path) -> None:
    result = run_suite(tmp_path, DATA_SKIP, anchors=tmp_path / "no-anchors")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout[-2000:]
    listed = result.stdout.split("tests skipped for missing data")[1]
    assert "test_data: Skipped: counterfact/x.json not found" in listed
    assert "test_other" not in listed


def test_third_party_tests_are_one_group_skip_without_their_code(tmp_path: Path) -> None:
    result = run_suite(tmp_path, THIRD_PARTY, anchors=tmp_path / "no-anchors")
    assert result.returncode == pytest.ExitCode.OK, result.stdout[-2000:]
    assert "2 tests of third-party code under test" in result.stdout
    assert "(1 more deselected)" in result.stdout
    assert "1 passed, 1 skipped, 1 deselected" in result.stdout


def test_third_party_tests_run_where_their_code_is(tmp_path: Path) -> None:
    (tmp_path / "anchors").mkdir()
    result = run_suite(tmp_path, THIRD_PARTY, anchors=tmp_path / "anchors")
    assert result.returncode == pytest.ExitCode.OK, result.stdout[-2000:]
    assert "3 passed" in result.stdout


def test_the_committed_samples_are_the_default_data_folder() -> None:
    """Each data file a test or a documented command names by a data-folder path is here."""
    for relative in (
        "counterfact/counterfact-rome-schema-sample.json",
        "counterfact/counterfact-val.json",
        "zsre/zsre_mend_train-1k.json",
        *(f"glue/{task}.jsonl" for task in ("sst2", "mrpc", "rte", "cola")),
    ):
        assert (FIXTURE_DATA / relative).is_file(), relative
    assert not (FIXTURE_DATA / "wikitext-2").exists(), "6 articles would become SmolLM2's C"
