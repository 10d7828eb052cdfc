"""``rome eval --editor``: the regression run on an editor under test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rome_fast.cli.main import main
from tests import conform_editors

QUICK = [
    "--model",
    "random:tiny-gpt2",
    "--data",
    "counterfact/counterfact-rome-schema-sample.json",
    "--limit",
    "1",
    "--modes",
    "single",
    "--generations",
    "1",
    "--generation-tokens",
    "4",
    "--stats-samples",
    "16",
]


def _single(out: Path) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = json.loads((out / "summary.json").read_text())[
        "results"
    ]["single"]
    return results


def test_eval_runs_an_editor_under_test(tmp_path: Path) -> None:
    code = main(
        ["eval", "--editor", "rome-verify", "--variant", "p-rome", *QUICK, "--out", str(tmp_path)]
    )
    assert code == 0
    row = _single(tmp_path)["rome-verify-p-rome"]
    assert row["n"] == 1
    assert row["failed"] == 0


def test_eval_records_a_failing_editor_and_keeps_the_model(tmp_path: Path) -> None:
    # the runner checks the weights are bit-identical to W0 after every single-mode case
    code = main(
        ["eval", "--editor", "tests.conform_editors:raises_midway", *QUICK, "--out", str(tmp_path)]
    )
    assert code == 0
    assert _single(tmp_path)["tests.conform_editors.raises_midway"]["failed"] == 1
    (line,) = (
        (tmp_path / "single-tests.conform_editors.raises_midway.jsonl").read_text().splitlines()
    )
    assert "planted failure after a partial write" in json.loads(line)["error"]


@pytest.mark.parametrize(
    ("option", "named"),
    [(["--variants", "rome"], "--variants"), (["--degrade", "flip"], "--degrade")],
)
def test_eval_editor_refuses_our_editors_options(
    option: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["eval", "--editor", "rome-verify", *option, *QUICK, "--out", str(tmp_path)])
    assert code == 2
    assert named in capsys.readouterr().err


# Under conform_editors.SLOW_SECONDS (1.5 s): the slow editor is late by 1.2 s.
TIMEOUT = 0.3


@pytest.mark.parametrize("mode", ["single", "sequential"])
def test_eval_editor_timeout_fails_a_slow_edit_and_ends_the_editors_edits(
    mode: str, tmp_path: Path
) -> None:
    """--timeout per edit: the late edit fails its case, on the model as it was (the runner
    checks single mode's weights bit for bit; the stream's ‖W − W0‖ stays 0), and the editor,
    whose thread cannot be killed, is not called again: the next case fails unrun."""
    spec = "tests.conform_editors:slow"
    conform_editors.slow_calls.clear()
    argv = ["eval", "--editor", spec, *QUICK, "--limit", "2", "--modes", mode]
    assert main([*argv, "--timeout", str(TIMEOUT), "--out", str(tmp_path)]) == 0
    rows = [
        json.loads(line)
        for line in (tmp_path / f"{mode}-{spec.replace(':', '.')}.jsonl").read_text().splitlines()
    ]
    assert f"did not return within {TIMEOUT:g} s" in rows[0]["error"]
    assert "not run: an earlier edit hung" in rows[1]["error"]
    assert conform_editors.slow_calls == [rows[0]["subject"]]
    assert [r["post"] for r in rows] == [r["pre"] for r in rows]
    assert all(r["diagnostics"] is None for r in rows)
    if mode == "sequential":
        assert [r["cumulative_norm"] for r in rows] == [0.0, 0.0]
    summary = json.loads((tmp_path / "summary.json").read_text())["results"][mode]
    assert summary[spec.replace(":", ".")]["failed"] == 2
