"""``--hparams``, ``--templates`` and user variants through the ``rome`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rome_fast.cli.eval import config_from_args
from rome_fast.cli.inputs import hparams_for_model, read_inputs
from rome_fast.cli.main import build_parser, main
from rome_fast.edit.value import LOSS_PARTS
from tests.models import tiny_model

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ROOT / "fixtures" / "inputs"
REQUEST = ["--prompt", "{} is located in", "--subject", "The tower", "--target-new", "Rome"]


pytestmark = pytest.mark.usefixtures("clean_registry")
# The README's example: a public-layout JSON (original ROME flags) and a templates file.
GPT2_INPUTS = [
    "--model",
    "random:tiny-gpt2",
    "--hparams",
    str(INPUTS / "tiny-gpt2-rome.json"),
    "--templates",
    str(INPUTS / "templates.txt"),
]


def edit(tmp_path: Path, *options: str) -> dict[str, object]:
    out = tmp_path / "edit.json"
    argv = ["edit", *options, *REQUEST, "--generation-tokens", "0", "--json", str(out)]
    assert main(argv) == 0, argv
    report: dict[str, object] = json.loads(out.read_text())
    return report


def test_edit_with_a_public_hparams_file_and_templates(tmp_path: Path) -> None:
    """The JSON's flags (original ROME) choose the variant; its v_num_grad_steps (6) is the
    loop's; the file's templates are the ones used and recorded; each step has its parts."""
    report = edit(tmp_path, *GPT2_INPUTS)
    assert report["variant"] == "rome"
    assert report["templates"] == (INPUTS / "templates.txt").read_text().splitlines()
    steps = report["loss_steps"]
    assert isinstance(steps, list)
    assert len(steps) == 6
    assert all(set(step) == set(LOSS_PARTS) for step in steps)
    assert report["loss_trace"] == [step["total"] for step in steps]


def test_an_explicit_variant_wins_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = f"{INPUTS / 'user_variant.py'}:closed_form_r_rome"
    report = edit(
        tmp_path,
        "--model",
        "random:tiny-llama",
        "--hparams",
        str(INPUTS / "tiny-llama-r-rome.yaml"),
        "--variant",
        spec,
    )
    assert report["variant"] == "user_variant:closed_form_r_rome"
    assert float(str(report["relative_residual_k_star"])) < 1e-4
    err = capsys.readouterr().err
    assert "the file's code runs 'r-rome'" in err
    assert "device (--device)" in err  # the yaml's device field, noted, not applied


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--hparams", "missing.json"], "hparams file 'missing.json' does not exist"),
        (["--templates", "missing.txt"], "templates file 'missing.txt' does not exist"),
        (["--variant", "nowhere:f@k_star"], "cannot import module 'nowhere'"),
    ],
)
def test_bad_inputs_are_one_line_errors(
    options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["edit", "--model", "random:tiny-gpt2", *options, *REQUEST]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_a_file_for_another_architecture_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    hparams = str(INPUTS / "tiny-llama-r-rome.yaml")
    assert main(["edit", "--model", "random:tiny-gpt2", "--hparams", hparams, *REQUEST]) == 2
    assert "another architecture" in capsys.readouterr().err


def test_eval_records_hparams_and_templates_in_the_run_identity(tmp_path: Path) -> None:
    spec = f"{INPUTS / 'user_variant.py'}:closed_form_r_rome"
    args = build_parser().parse_args(
        [
            "eval",
            *GPT2_INPUTS,
            "--variants",
            f"r-rome,{spec}",
            "--modes",
            "single",
            "--out",
            str(tmp_path),
        ]
    )
    read_inputs(args)
    hparams = hparams_for_model(args, tiny_model("tiny-gpt2"))
    config = config_from_args(args, "random:tiny-gpt2", hparams)
    assert config.variants == ("r-rome", "user_variant:closed_form_r_rome")
    assert config.hparams is not None
    assert config.hparams["v_num_grad_steps"] == 6
    assert config.templates == tuple((INPUTS / "templates.txt").read_text().splitlines())
    assert "hparams" in config.comparable()
    assert "templates" in config.comparable()


def test_the_files_variant_is_the_default_of_variants() -> None:
    args = build_parser().parse_args(
        ["demo", "--model", "random:tiny-gpt2", "--hparams", str(INPUTS / "tiny-gpt2-rome.json")]
    )
    read_inputs(args)
    assert args.variants == "rome"
    args = build_parser().parse_args(["demo", "--model", "random:tiny-gpt2"])
    read_inputs(args)
    assert args.variants == "rome,r-rome,p-rome"


def test_eval_modes_default_to_single() -> None:
    """``--sequential`` and ``--modes`` share a destination; neither given means single."""
    args = build_parser().parse_args(["eval", "--out", "runs/x"])
    assert args.modes == "single"
    assert build_parser().parse_args(["eval", "--sequential", "--out", "x"]).modes == "sequential"
