"""``rome conform`` and the pytest entry, end to end on a tiny model (exit codes, JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rome_fast.cli.main import main

FAST = ["--model", "random:tiny-gpt2", "--cases", "1", "--steps", "3", "--stats-samples", "16"]


def test_conform_exit_0_and_json_when_the_verdict_is_expected(tmp_path: Path) -> None:
    out = tmp_path / "conform.json"
    code = main(
        [
            "conform",
            "--editor",
            "rome-verify",
            "--variant",
            "p-rome",
            "--expect",
            "p-rome",
            "--json",
            str(out),
            *FAST,
        ]
    )
    report = json.loads(out.read_text())
    assert code == 0, report
    assert report["verdict"] == "p-rome"
    assert report["ok"] is True
    assert report["properties"]["insertion_key"]["passed"] is True
    assert isinstance(report["properties"]["rank_one"]["value"], float)
    assert len(report["settings"]["templates"]) == 21


def test_conform_exit_1_on_a_planted_bug(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "conform",
            "--editor",
            "tests.conform_editors:dropped_c_inverse",
            "--expect",
            "r-rome",
            *FAST,
        ]
    )
    out = capsys.readouterr().out
    assert code == 1, out
    assert "direction_key       FAILED" in out
    assert "reproduce: rome conform" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--editor", "nonsense"], "unknown --editor"),
        (["--editor", "rebuilding-rome"], "--editor-path"),
        (["--editor", "rome-verify", "--editor-path", "."], "not used with"),
        (["--editor", "no_such_module_xyz:edit"], "cannot import"),
        (["--editor", "rome-verify", "--cases", "0"], "--cases"),
        (["--editor", "rome-verify", "--variant", "q-rome"], "q-rome"),
    ],
)
def test_conform_bad_usage_exits_2_with_one_line(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ROME_EDITOR_PATH", raising=False)
    code = main(["conform", *argv, "--model", "random:tiny-gpt2"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1, err


def run_pytest_entry(
    settings: dict[str, str], *args: str, module: str = "rome_fast.conform.test_conformance"
) -> subprocess.CompletedProcess[str]:
    """``pytest --pyargs MODULE`` (the conformance entry) with ``settings`` in its
    environment, as a user's CI runs it."""
    entry = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs"]
    return subprocess.run(
        [sys.executable, *entry, module, *args],
        env={**os.environ, **settings},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_pytest_entry_reports_each_property() -> None:
    run = run_pytest_entry(
        {
            "ROME_CONFORM_EDITOR": "tests.conform_editors:revert_by_rounding",
            "ROME_CONFORM_EXPECT": "r-rome",
            "ROME_CONFORM_CASES": "1",
            "ROME_CONFORM_STEPS": "3",
        }
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAILED rome_fast/conform/test_conformance.py::test_property[revert_exact]" in run.stdout
    assert "1 failed" in run.stdout, run.stdout


def _strict_json(path: Path) -> dict[str, object]:
    """The report, refusing the non-standard NaN/Infinity tokens."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{path} holds {token}, which is not valid JSON")

    report: dict[str, object] = json.loads(path.read_text(), parse_constant=refuse)
    return report


@pytest.mark.parametrize(
    ("editor", "caught", "options"),
    [
        ("wrong_layer", "only_edited_weight", []),
        ("training_mode", "model_state", []),
        ("hook_left", "model_state", []),
        ("non_finite", "finite", []),
        ("raises_midway", "edit_completed", []),
        ("hangs", "edit_completed", ["--timeout", "1"]),
        ("StaleWeight", "insertion_key", ["--sequential", "2"]),
    ],
)
def test_conform_editor_failures_are_verdicts_exit_1_with_valid_json(
    editor: str, caught: str, options: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "conform.json"
    argv = ["conform", "--editor", f"tests.conform_editors:{editor}", "--expect", "r-rome"]
    code = main([*argv, "--json", str(out), *FAST, *options])
    printed = capsys.readouterr().out
    assert code == 1, printed
    assert f"{caught:<18}  FAILED" in printed, printed
    report = _strict_json(out)
    properties = report["properties"]
    assert isinstance(properties, dict)
    assert properties[caught]["passed"] is False


def test_conform_timeout_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["conform", "--editor", "rome-verify", "--timeout", "0", *FAST])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--timeout must be a positive number" in err
    assert len(err.strip().splitlines()) == 1, err


def test_pytest_entry_runs_edits_in_sequence() -> None:
    run = run_pytest_entry(
        {
            "ROME_CONFORM_EDITOR": "tests.conform_editors:StaleWeight",
            "ROME_CONFORM_EXPECT": "r-rome",
            "ROME_CONFORM_SEQUENTIAL": "2",
            "ROME_CONFORM_STEPS": "3",
        },
        "-k",
        "insertion_key",
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert (
        "FAILED rome_fast/conform/test_conformance.py::test_property[insertion_key]" in run.stdout
    )
