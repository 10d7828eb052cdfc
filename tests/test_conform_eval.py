"""``rome eval --editor``: the regression run on an editor under test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rome_fast.cli.main import main

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
