"""Bad input to ``rome``: one line naming the problem, exit code 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from rome_fast.cli.main import main
from rome_fast.eval.gates import baselines_dir
from rome_fast.infra.datadir import default_data_dir

TINY = ["--model", "random:tiny-gpt2"]
# A batched run refused before it loads; were it not, it would stay short.
BATCHED = ["--method", "memit", "--batch-size", "2", "--limit", "2", "--generations", "1"]
EDIT = ["edit", *TINY, "--prompt", "{} is in", "--subject", "Paris", "--target-new", "Rome"]


def counterfact() -> Path:
    return default_data_dir() / "counterfact" / "counterfact-val.json"


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """Run ``rome argv``; it must exit 2 with one line (argparse: a usage line and one)."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own refusal
        code = int(exit_.code or 0)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line and not line.startswith(" ")]
    assert code == 2, f"rome {' '.join(argv)} exited {code}: {err}"
    assert "Traceback" not in err
    assert len([x for x in lines if not x.startswith("usage:")]) == 1, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["eval", *TINY, "--limit", "0"], "--limit"),
        (["eval", *TINY, "--limit", "-3"], "--limit"),
        (["eval", *TINY, "--offset", "-1"], "--offset"),
        (["eval", *TINY, "--score-batch", "0"], "--score-batch"),
        (["eval", *TINY, "--batch-size", "2"], "--method"),
        (["eval", *TINY, "--method", "memit"], "--batch-size"),
        (["eval", *TINY, "--method", "memit", "--batch-size", "0"], "--batch-size"),
        (["eval", *TINY, "--method", "rome", "--batch-size", "2"], "'rome'"),
        (["eval", *TINY, *BATCHED, "--variants", "rome"], "--variants"),
        (["eval", *TINY, *BATCHED, "--editor", "memit"], "--editor-path"),  # its checkout
        # before Ray is looked for: the default suite has none
        (["eval", *TINY, *BATCHED, "--editor", "rome-verify", "--workers", "2"], "--editor"),
        (["eval", *TINY, "--editor", "rome-verify", "--ray-address", "auto"], "--editor"),
        (["eval", *TINY, *BATCHED, "--impl", "naive"], "--impl naive"),
        (["eval", *TINY, *BATCHED, "--degrade", "zero"], "--degrade"),
        (["eval", *TINY, "--stats-samples", "0"], "--stats-samples"),
        (["eval", *TINY, "--workers", "0"], "--workers"),
        (["eval", *TINY, "--variants", "nonsense"], "nonsense"),
        (["demo", *TINY, "--variants", "rome,nonsense"], "nonsense"),
    ],
)
def test_bad_option_is_refused_before_a_folder_is_made(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    refused([*argv, "--out", str(out)], capsys, needle)
    assert not out.exists()


def test_negative_generation_tokens_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    refused([*EDIT, "--generation-tokens", "-3"], capsys, "--generation-tokens")


def test_sweep_with_a_layer_out_of_range_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    refused(["sweep", *TINY, "--layers", "1,99", "--out", str(out)], capsys, "99")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_without_cuda_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    refused([*EDIT, "--device", "cuda"], capsys, "CUDA is not available")


def test_json_naming_a_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused([*EDIT, "--json", str(tmp_path)], capsys, "is a folder")


def test_out_naming_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    refused(["eval", *TINY, "--out", str(a_file)], capsys, "is a file")
    assert a_file.read_text() == "keep me"


def test_missing_glue_data_is_refused_before_a_folder_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["eval", *TINY, "--data", str(counterfact()), "--limit", "1", "--sequential"]
    argv += ["--glue-every", "1", "--glue-data", str(tmp_path / "nowhere"), "--out", str(out)]
    refused(argv, capsys, "--glue-data")
    assert not out.exists()


def test_glue_prompts_beyond_the_context_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    # tiny-gpt2 has a context of 256 tokens: 40 shots do not fit.
    argv = ["eval", *TINY, "--data", str(counterfact()), "--limit", "1", "--sequential"]
    argv += ["--glue-every", "1", "--glue-shots", "40", "--glue-n", "2", "--out", str(out)]
    refused(argv, capsys, "context of 256 tokens", "--glue-shots")
    assert not out.exists()


def summary_file(tmp_path: Path, value: object) -> Path:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(value))
    return path


def test_gate_summary_that_is_a_list_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = summary_file(tmp_path, [1, 2])
    refused(["gate", "--summary", str(path), "--baseline", "gptj-single"], capsys, "list")


def test_baseline_from_a_summary_lacking_a_metric_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = dict.fromkeys(("ES", "EM", "PS", "PM", "NS", "NM"), 50.0)  # no S
    path = summary_file(
        tmp_path, {"model": "m", "n_cases": 3, "results": {"single": {"rome": table}}}
    )
    out = tmp_path / "b.json"
    argv = ["baseline", "--summary", str(path), "--mode", "single", "--name", "b"]
    argv += ["--source", "test", "--tolerance", "1", "--json", str(out)]
    refused(argv, capsys, "lack S")
    assert not out.exists()


def test_baseline_does_not_overwrite_an_existing_file_without_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "gptj-single.json"
    shutil.copyfile(baselines_dir() / "gptj-single.json", existing)
    before = existing.read_bytes()
    table = dict.fromkeys(("ES", "EM", "PS", "PM", "NS", "NM", "S"), 50.0)
    path = summary_file(
        tmp_path, {"model": "m", "n_cases": 3, "results": {"single": {"rome": table}}}
    )
    argv = ["baseline", "--summary", str(path), "--mode", "single", "--name", "gptj-single"]
    argv += ["--source", "test", "--tolerance", "1", "--json", str(existing)]
    refused(argv, capsys, "--overwrite")
    assert existing.read_bytes() == before
    assert main([*argv, "--overwrite"]) == 0
    assert existing.read_bytes() != before


def test_baseline_needs_a_json_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No default into the installed package's folder (read-only or shared in a wheel install)."""
    shipped = {p.name: p.read_bytes() for p in baselines_dir().glob("*.json")}
    table = dict.fromkeys(("ES", "EM", "PS", "PM", "NS", "NM", "S"), 50.0)
    path = summary_file(
        tmp_path, {"model": "m", "n_cases": 3, "results": {"single": {"rome": table}}}
    )
    argv = ["baseline", "--summary", str(path), "--mode", "single", "--name", "gptj-single"]
    refused([*argv, "--source", "test", "--tolerance", "1"], capsys, "--json")
    assert {p.name: p.read_bytes() for p in baselines_dir().glob("*.json")} == shipped


def test_interrupted_eval_says_that_rerunning_resumes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import rome_fast.cli.eval as eval_cli

    def interrupted(_args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_cli, "run_eval", interrupted)
    assert main(["eval", *TINY, "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "rerunning the same command resumes" in err
