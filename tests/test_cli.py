"""The `rome` console script: argument errors on a tiny model, real edits on SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rome_fast.cli.main import main
from tests.models import require_smollm2

EIFFEL = [
    "--prompt",
    "{} is located in the city of",
    "--subject",
    "The Eiffel Tower",
    "--target-new",
    "Rome",
    "--target-true",
    "Paris",
]


def test_prompt_without_slot_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "edit",
            "--model",
            "random:tiny-gpt2",
            "--prompt",
            "no slot",
            "--subject",
            "x",
            "--target-new",
            "y",
        ]
    )
    assert code == 2
    assert "{}" in capsys.readouterr().err


def test_unknown_model_names_what_to_provide(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["edit", "--model", "no-such-model-here", *EIFFEL])
    assert code == 2
    assert "local Hugging Face cache" in capsys.readouterr().err


def run_edit(variant: str, out: Path) -> dict[str, Any]:
    assert (
        main(
            [
                "edit",
                "--model",
                "smollm2",
                *EIFFEL,
                "--variant",
                variant,
                "--seed",
                "0",
                "--generation-tokens",
                "0",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report: dict[str, object] = json.loads(out.read_text())
    return report


@pytest.mark.smollm2
@pytest.mark.slow
def test_r_rome_edit_moves_rome_to_the_top_and_inserts_exactly(tmp_path: Path) -> None:
    require_smollm2()
    report = run_edit("r-rome", tmp_path / "r-rome.json")
    assert report["top_token_before"] == " Paris"
    assert report["top_token_after"] == " Rome"
    for key in (
        "variant",
        "prob_target_before",
        "prob_target_after",
        "delta_norm",
        "relative_residual_k_star",
        "relative_residual_k_prompt",
        "edit_seconds",
        "seed",
    ):
        assert key in report, key
    assert report["relative_residual_k_star"] < 1e-5  # float32 precision
    assert report["relative_residual_k_prompt"] > 1e-3  # k_prompt is not the inserted key


@pytest.mark.smollm2
@pytest.mark.slow
def test_original_rome_leaves_a_residual_at_k_star(tmp_path: Path) -> None:
    require_smollm2()
    report = run_edit("rome", tmp_path / "rome.json")
    assert report["relative_residual_k_prompt"] < 1e-5
    assert report["relative_residual_k_star"] > 1e-3


def test_tf32_on_cpu_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["edit", "--model", "random:tiny-gpt2", "--precision", "tf32", *EIFFEL])
    assert code == 2
    assert "needs a CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize(("generate", "precision"), [("0", "fp32"), ("3", "bf16")])
def test_edit_writes_the_json_fields_on_a_tiny_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, generate: str, precision: str
) -> None:
    monkeypatch.setenv("ROME_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "edit.json"
    code = main(
        [
            "edit",
            "--model",
            "random:tiny-gpt2",
            *EIFFEL,
            "--stats-samples",
            "8",
            "--generation-tokens",
            generate,
            "--precision",
            precision,
            "--json",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert (report["impl"], report["v_precision"]) == ("fast", precision)
    assert report["variant"] == "r-rome"
    assert report["seed"] == 0
    assert report["relative_residual_k_star"] < 1e-4
    assert len(report["continuations"]) == (0 if generate == "0" else 2)
