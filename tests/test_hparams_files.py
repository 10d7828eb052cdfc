"""Hyperparameter files users hold: the public code's JSON and EasyEdit's yaml, read whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rome_fast.edit.editor import Editor
from rome_fast.edit.request import EditRequest
from rome_fast.hparams.defaults import HParams, StatsOptions, VStarOptions, hparams_for
from rome_fast.hparams.files import (
    FIELDS,
    check_against_model,
    read_hparams_file,
    variant_from_flags,
)
from rome_fast.stats.covariance import StatsSource, default_covariance
from tests.anchors import checkout
from tests.models import REQUEST, TEMPLATES, fresh_model, tiny_hparams, tiny_model

ROOT = Path(__file__).resolve().parents[1]
# The ROME-family folders: the batched editors' files (MEMIT, EMMET, AlphaEdit) sit beside
# them in the same checkout and are read by their own tests.
ROME_FOLDERS = ("ROME", "R-ROME")
# EasyEdit's files, relative to its hparams/ folder (named here: the checkout may be absent).
EASYEDIT_YAML = [
    f"{folder}/{model}.yaml"
    for folder in ROME_FOLDERS
    for model in ("gpt-j-6B", "gpt2-xl", "llama3.2-3b")
]
FIXTURES = ROOT / "fixtures" / "inputs"


def easyedit_hparams() -> Path:
    return checkout("easyedit") / "hparams"


def write(tmp_path: Path, fields: dict[str, object], suffix: str = ".json") -> Path:
    path = tmp_path / f"hparams{suffix}"
    path.write_text(json.dumps(fields))
    return path


@pytest.mark.parametrize("name", ["EleutherAI_gpt-j-6B", "gpt2-large", "gpt2-medium", "gpt2-xl"])
@pytest.mark.anchors
def test_public_json_gives_the_public_values_and_r_rome(name: str) -> None:
    """The shipped files state no variant flag, so the public code runs its defaults
    (original_implementation and enable_random_prefix_keys true): k* on both sides."""
    path = checkout("rebuilding-rome") / "hparams" / "ROME" / f"{name}.json"
    raw = json.loads(path.read_text())
    hfile = read_hparams_file(path)
    hp = hfile.apply(HParams(layer=0))
    assert hfile.variant == "r-rome"
    assert hp.layer == raw["layers"][0]
    assert (
        hp.v_star.num_grad_steps,
        hp.v_star.lr,
        hp.v_star.weight_decay,
        hp.v_star.kl_factor,
    ) == (20, 0.5, 0.5, 0.0625)
    assert hp.v_star.clamp_norm_factor == raw["clamp_norm_factor"]
    assert hp.v_star.context_template_schedule == ((5, 10), (10, 10))
    assert (hp.mom2_adjustment, hp.stats.n_samples, hp.stats.dtype) == (True, 100_000, "float32")
    # The paper's own per-model table (SPEC §4) agrees with its files.
    assert hp == hparams_for(name.removeprefix("EleutherAI_").lower())


@pytest.mark.anchors
@pytest.mark.parametrize("name", EASYEDIT_YAML)
def test_easyedit_yaml_is_read_whole(name: str) -> None:
    """Every field is known; ``5e-1`` (a string to YAML 1.1) is the number 0.5; the shipped
    files turn C off; ``alg_name`` picks the variant."""
    import yaml

    path = easyedit_hparams() / name
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= set(FIELDS), sorted(set(raw) - set(FIELDS))
    hfile = read_hparams_file(path)
    hp = hfile.apply(HParams(layer=0))
    assert hfile.variant == {"ROME": "rome", "R-ROME": "r-rome"}[raw["alg_name"]]
    assert hp.v_star.lr == 0.5
    assert hp.mom2_adjustment is False
    assert (hp.layer, hp.v_star.num_grad_steps) == (raw["layers"][0], raw["v_num_grad_steps"])
    assert hp.v_star.weight_decay == float(raw["v_weight_decay"])
    assert "device" in hfile.notes[0]  # set by --device, said so


@pytest.mark.anchors
def test_easyedit_files_are_present() -> None:
    found = [
        p.relative_to(easyedit_hparams())
        for f in ROME_FOLDERS
        for p in (easyedit_hparams() / f).glob("*.yaml")
    ]
    assert sorted(str(p) for p in found) == sorted(EASYEDIT_YAML)


@pytest.mark.parametrize(
    ("original", "random_prefix", "prompt", "variant"),
    [
        (True, True, False, "r-rome"),
        (False, True, False, "r-rome"),
        (True, False, True, "rome"),
        (False, False, True, "p-rome"),
    ],
)
def test_public_flags_map_to_variants(
    original: bool, random_prefix: bool, prompt: bool, variant: str
) -> None:
    flags = {
        "original_implementation": original,
        "enable_random_prefix_keys": random_prefix,
        "enable_prompt_keys": prompt,
    }
    assert variant_from_flags(flags) == variant


@pytest.mark.parametrize("both", [True, False])
def test_flags_that_the_public_code_rejects_are_refused(tmp_path: Path, both: bool) -> None:
    path = write(
        tmp_path, {"layers": [1], "enable_prompt_keys": both, "enable_random_prefix_keys": both}
    )
    with pytest.raises(ValueError, match="exactly one is true"):
        read_hparams_file(path)


def test_easyedit_r_rome_flags_are_read(tmp_path: Path) -> None:
    fields = {"alg_name": "R-ROME", "layers": [1], "enable_prompt_keys": True}
    fields["enable_random_prefix_keys"] = False
    assert read_hparams_file(write(tmp_path, fields, ".yaml")).variant == "p-rome"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"layers": [1], "v_lr_typo": 0.5}, "unknown fields \\['v_lr_typo'\\]"),
        ({"layers": [1], "fact_token": "subject_first"}, "'fact_token' is 'subject_first'"),
        ({"layers": [3, 4]}, "lists 2 layers"),
        ({"layers": [1], "alg_name": "MEMIT"}, "'alg_name' is 'MEMIT'"),
        ({"layers": [1], "mom2_dataset": "c4"}, "--stats-corpus"),
        ({"alg_name": "ROME", "layers": [1], "enable_prompt_keys": True}, "not read by"),
        ({"layers": [1], "v_precision": "bf16"}, "unknown fields \\['v_precision'\\]"),
        ({"layers": [1], "v_lr": "fast"}, "'v_lr' must be a number"),
        ({"layers": [1], "v_num_grad_steps": 2.5}, "must be an integer"),
        ({"layers": [1], "mom2_adjustment": "no"}, "true or false"),
        ({"layers": [1], "context_template_length_params": [5, 10]}, "pairs"),
        ({"layers": [1], "v_lr": -1}, "v_lr must be > 0"),
        ({"layers": [1], "layer": 2}, "'layers' and 'layer' both set layer"),
    ],
)
def test_fields_we_cannot_honour_are_refused_by_name(
    tmp_path: Path, fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        read_hparams_file(write(tmp_path, fields)).apply(HParams(layer=0))


def test_our_own_field_names_are_read(tmp_path: Path) -> None:
    path = write(tmp_path, {"layer": 2, "v_early_stop_loss": 0.0, "mom2_max_length": 64})
    hfile = read_hparams_file(path)
    assert hfile.variant is None  # no editor stated: the command's default applies
    assert read_hparams_file(write(tmp_path, {"layer": 2, "v_lr": 0.1})).variant is None
    assert hfile.apply(HParams(layer=0)) == HParams(
        layer=2, v_star=VStarOptions(early_stop_loss=0.0), stats=StatsOptions(max_length=64)
    )


def test_missing_and_malformed_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        read_hparams_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_hparams_file(bad)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        read_hparams_file(bad_yaml)


@pytest.mark.anchors
def test_module_names_must_be_the_models() -> None:
    gpt2 = tiny_model("tiny-gpt2")
    llama_file = read_hparams_file(easyedit_hparams() / "ROME" / "llama3.2-3b.yaml")
    with pytest.raises(ValueError, match="another architecture"):
        check_against_model(llama_file, gpt2.model, gpt2.adapter, 1)
    llama = tiny_model("tiny-llama")
    check_against_model(llama_file, llama.model, llama.adapter, 1)


def test_a_module_the_model_lacks_is_refused(tmp_path: Path) -> None:
    gpt2 = tiny_model("tiny-gpt2")
    path = write(tmp_path, {"layers": [1], "ln_f_module": "transformer.final_norm"})
    with pytest.raises(ValueError, match=r"'transformer\.final_norm'"):
        check_against_model(read_hparams_file(path), gpt2.model, gpt2.adapter, 1)


def test_mom2_adjustment_off_uses_the_key_as_the_direction() -> None:
    """C = I: the update moves W along k* itself (the public code skips C⁻¹)."""
    loaded = fresh_model("tiny-gpt2")
    hp = tiny_hparams("tiny-gpt2", mom2_adjustment=False)
    editor = Editor(loaded, hparams=hp, templates=TEMPLATES)
    result = editor.edit(EditRequest(*REQUEST), variant="r-rome")
    right = result.update.at(result.module_name).right[:, 0]  # (d_in,)
    cosine = torch.nn.functional.cosine_similarity(right, result.k_star, dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-6), f"cos(right, k*) = {float(cosine)}"
    assert result.relative_residual_k_star < 1e-4


def test_mom2_adjustment_off_refuses_statistics_it_would_ignore() -> None:
    hp = tiny_hparams("tiny-gpt2", mom2_adjustment=False)
    with pytest.raises(ValueError, match="mom2_adjustment is off"):
        default_covariance(hp, StatsSource(npz_path="stats.npz"))


def test_own_fixtures_are_read() -> None:
    """The README's examples: a public-layout JSON (original ROME flags) and an EasyEdit
    R-ROME yaml, written for the tiny random models."""
    gpt2 = read_hparams_file(FIXTURES / "tiny-gpt2-rome.json")
    assert (gpt2.variant, gpt2.layer) == ("rome", 1)
    llama = read_hparams_file(FIXTURES / "tiny-llama-r-rome.yaml")
    assert (llama.variant, llama.apply(HParams(layer=0)).mom2_adjustment) == ("r-rome", False)
