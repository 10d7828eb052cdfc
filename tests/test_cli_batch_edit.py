"""``rome edit --method``: many facts from a JSON file; every bad input is one line and exit 2
before any model is loaded; a batch on a tiny model prints one line per fact and writes each
fact's record and the batch's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rome_fast.cli.main import main
from rome_fast.edit.request import EditRequest

FACTS = Path(__file__).resolve().parents[1] / "fixtures" / "inputs" / "facts.json"
TINY = ["edit", "--model", "random:tiny-gpt2", "--device", "cpu"]


def write(tmp_path: Path, value: object) -> str:
    path = tmp_path / "requests.json"
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return str(path)


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line of a refused command (exit 2, no traceback)."""
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("rome edit: error: "), lines
    return lines[0]


GOOD = {"prompt": "{} plays", "subject": "Miles Davis", "target_new": "piano"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        ("{not json", "not valid JSON"),
        ({"prompt": "{} is"}, "expected a non-empty JSON list"),
        ([], "expected a non-empty JSON list"),
        ([GOOD, "text"], "item 1 is a str, not an object"),
        ([{"prompt": "{} is", "subject": "s"}], "item 0 lacks target_new"),
        ([{**GOOD, "target": "x"}], "item 0 has unknown fields target"),
        ([{**GOOD, "prompt": "no slot"}], "item 0: "),
    ],
)
def test_a_bad_requests_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: object, expected: str
) -> None:
    path = str(tmp_path / "missing.json") if content is None else write(tmp_path, content)
    assert expected in refused([*TINY, "--method", "memit", "--requests", path], capsys)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--method", "rome", "--requests", str(FACTS)], "unknown batched method 'rome'"),
        (["--method", "memit"], "--method needs --requests FILE.json"),
        (["--method", "memit", "--requests", str(FACTS), "--keys", "bare"], "unknown key choice"),
        (["--method", "memit", "--requests", str(FACTS), "--subject", "s"], "--subject describe"),
        (["--method", "memit", "--requests", str(FACTS), "--impl", "naive"], "--impl naive"),
        (["--requests", str(FACTS)], "add --method"),
        (["--method", "memit", "--requests", str(FACTS), "--variant", "p-rome"], "--variant apply"),
        (
            ["--method", "memit", "--requests", str(FACTS), "--generation-tokens", "20"],
            "--generation-tokens apply",
        ),
    ],
)
def test_misused_options_are_one_line(
    capsys: pytest.CaptureFixture[str], options: list[str], expected: str
) -> None:
    assert expected in refused([*TINY, *options], capsys)


def test_a_batch_prints_each_fact_and_writes_their_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "batch.json"
    argv = [*TINY, "--method", "emmet", "--requests", str(FACTS), "--keys", "k_prompt"]
    assert main([*argv, "--stats-samples", "8", "--json", str(out)]) == 0
    requests = [EditRequest(**item) for item in json.loads(FACTS.read_text())]
    printed = capsys.readouterr().out.splitlines()
    for i, request in enumerate(requests):
        assert printed[i].startswith(f"fact {i}: {request.subject!r} -> {request.target_new!r}")
    written = json.loads(out.read_text())
    assert [fact["request"]["subject"] for fact in written["facts"]] == [
        r.subject for r in requests
    ]
    for fact in written["facts"]:
        assert {"prob_target_before", "prob_target_after", "prob_true_after"} <= set(fact)
        assert {"relative_residual_k_star", "relative_residual_k_prompt"} <= set(fact)
    batch = written["batch"]
    assert (batch["method"], batch["key_choice"]) == ("emmet", "k_prompt")
    assert [site["layer"] for site in batch["sites"]] == batch["method_hparams"]["layers"]
    assert "facts" not in batch


def batched_file(tmp_path: Path, **fields: object) -> str:
    """EasyEdit's EMMET yaml fields for the tiny model (JSON is YAML)."""
    path = tmp_path / "emmet.yaml"
    base = {"alg_name": "EMMET", "layers": [1], "mom2_update_weight": 1000, "emmet_lambda": 0}
    path.write_text(json.dumps({**base, **fields}))
    return str(path)


def test_a_batched_hparams_file_sets_the_method_and_its_layers(tmp_path: Path) -> None:
    """The file's method hyperparameters reach the edit: its layers and λₑ = 0 (exact insertion)."""
    out = tmp_path / "batch.json"
    hparams = batched_file(tmp_path, v_num_grad_steps=3)
    argv = [*TINY, "--method", "emmet", "--requests", str(FACTS), "--hparams", hparams]
    assert main([*argv, "--stats-samples", "8", "--json", str(out)]) == 0
    batch = json.loads(out.read_text())["batch"]
    assert batch["method_hparams"]["layers"] == [1]
    assert batch["method_hparams"]["emmet_lambda"] == 0
    assert [site["layer"] for site in batch["sites"]] == [1]


@pytest.mark.parametrize(
    ("method", "extra", "expected"),
    [
        ("memit", [], "is EasyEdit's EMMET file but the method asked is 'memit'"),
        ("emmet", ["--layer", "0"], "names the edited layers [1]: drop --layer"),
    ],
)
def test_a_batched_hparams_file_that_disagrees_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    method: str,
    extra: list[str],
    expected: str,
) -> None:
    argv = [*TINY, "--method", method, "--requests", str(FACTS), "--hparams"]
    assert expected in refused([*argv, batched_file(tmp_path), *extra], capsys)
