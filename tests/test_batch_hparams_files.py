"""The batched editors' files users hold (the original MEMIT JSON, EasyEdit's MEMIT, EMMET and
AlphaEdit yamls), read whole: every field applied, checked, noted or refused by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rome_fast.hparams.batch_files import (
    BATCH_OWNED_ELSEWHERE,
    METHOD_FIELDS,
    METHODS,
    NOT_READ,
    SHARED,
    TEMPLATE_SCHEDULE,
    read_batch_hparams_file,
)
from rome_fast.hparams.defaults import HParams
from rome_fast.hparams.files import MODULE_FIELDS
from tests.anchors import checkout

CHECKED = ("alg_name", "fact_token", "v_loss_layer")


def memit_json() -> dict[str, Any]:
    """The original MEMIT code's gpt2-xl file, as it ships (``hparams/MEMIT/gpt2-xl.json``)."""
    return {
        "layers": [13, 14, 15, 16, 17],
        "clamp_norm_factor": 0.75,
        "layer_selection": "all",
        "fact_token": "subject_last",
        "v_num_grad_steps": 20,
        "v_lr": 5e-1,
        "v_loss_layer": 47,
        "v_weight_decay": 0.5,
        "kl_factor": 0.0625,
        "mom2_adjustment": True,
        "mom2_update_weight": 20000,
        "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj",
        "mom2_dataset": "wikipedia",
        "mom2_n_samples": 100000,
        "mom2_dtype": "float32",
    }


def write(tmp_path: Path, fields: dict[str, Any]) -> Path:
    path = tmp_path / "hparams.json"
    path.write_text(json.dumps(fields))
    return path


def public_files() -> list[Path]:
    easyedit = checkout("easyedit") / "hparams"
    yamls = [p for alg in METHODS for p in sorted((easyedit / alg).glob("*.yaml"))]
    return [*sorted((checkout("memit") / "hparams" / "MEMIT").glob("*.json")), *yamls]


@pytest.mark.anchors
def test_every_public_batched_file_is_read_with_its_values() -> None:
    """Each shipped file: the method's own values and the shared ones, field by field."""
    import yaml

    files = public_files()
    assert len(files) == 2 + 11 + 4 + 6  # MEMIT JSON, EasyEdit MEMIT, EMMET, AlphaEdit
    for path in files:
        raw = yaml.safe_load(path.read_text())  # JSON is YAML
        hfile = read_batch_hparams_file(path, "memit" if path.suffix == ".json" else None)
        assert hfile.method == METHODS.get(raw.get("alg_name"), "memit"), path
        assert hfile.method_hparams.layers == tuple(raw["layers"]), path
        for name in METHOD_FIELDS[hfile.method]:
            assert getattr(hfile.method_hparams, name) == float(raw[name]), (path, name)
        hp = hfile.apply(HParams(layer=0))
        assert hp.layer == raw["layers"][-1]
        assert hp.v_star.lr == float(raw["v_lr"]), path
        assert hp.v_star.num_grad_steps == raw["v_num_grad_steps"], path
        assert hp.v_star.context_template_schedule == TEMPLATE_SCHEDULE
        assert hp.stats.n_samples == raw["mom2_n_samples"], path


@pytest.mark.anchors
def test_every_public_field_has_one_rule() -> None:
    """No field of a shipped file falls through: each is shared, the method's, a module name,
    owned by another option, never read by the public code, or checked."""
    import yaml

    rules = [
        set(SHARED),
        {"layers", *(name for fields in METHOD_FIELDS.values() for name in fields)},
        set(MODULE_FIELDS),
        set(BATCH_OWNED_ELSEWHERE),
        set(NOT_READ),
        set(CHECKED),
    ]
    for path in public_files():
        for name in yaml.safe_load(path.read_text()):
            assert sum(name in rule for rule in rules) == 1, (path, name)


def test_the_memit_json_needs_a_method(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"names no method.*--method memit"):
        read_batch_hparams_file(write(tmp_path, memit_json()))


def test_a_method_other_than_the_files_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, {**memit_json(), "alg_name": "MEMIT"})
    with pytest.raises(ValueError, match=r"EasyEdit's MEMIT file.*'emmet'.*--method memit"):
        read_batch_hparams_file(path, "emmet")


def test_a_rome_file_is_refused_naming_its_reader(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"alg_name is 'ROME'.*without --method"):
        read_batch_hparams_file(write(tmp_path, {**memit_json(), "alg_name": "ROME"}))


def test_an_unknown_field_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown fields \['mom2_update_wieght'\]"):
        read_batch_hparams_file(write(tmp_path, {**memit_json(), "mom2_update_wieght": 1}), "memit")


def test_another_methods_field_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, {**memit_json(), "emmet_lambda": 0.1})
    with pytest.raises(ValueError, match=r"\['emmet_lambda'\] belong to another method"):
        read_batch_hparams_file(path, "memit")


def test_layers_out_of_order_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, {**memit_json(), "layers": [5, 4]})
    with pytest.raises(ValueError, match=r"hparams\.json.*increasing order"):
        read_batch_hparams_file(path, "memit")


def test_fields_the_public_code_never_reads_are_noted_not_applied(tmp_path: Path) -> None:
    """MEMIT's code never reads mom2_adjustment: ROME's HParams field stays as it was."""
    hfile = read_batch_hparams_file(
        write(tmp_path, {**memit_json(), "mom2_adjustment": False}), "memit"
    )
    assert "mom2_adjustment" not in hfile.shared.changes
    assert any("never read" in note and "mom2_adjustment" in note for note in hfile.shared.notes)


def test_alphaedit_files_carry_memits_weight_unread(tmp_path: Path) -> None:
    fields = {**memit_json(), "alg_name": "AlphaEdit", "nullspace_threshold": 2e-2, "L2": 10}
    hfile = read_batch_hparams_file(write(tmp_path, {**fields, "P_loc": "./p.pt"}))
    assert hfile.method == "alphaedit"
    notes = " ".join(hfile.shared.notes)
    assert "mom2_update_weight (AlphaEdit's solve has no λC term)" in notes
    assert "P_loc" in notes


def test_the_target_layer_is_the_last_edited_one(tmp_path: Path) -> None:
    hfile = read_batch_hparams_file(write(tmp_path, memit_json()), "memit")
    assert hfile.apply(HParams(layer=0)).layer == 17
