"""``EditResult.as_record()``: the one JSON form of a result (edit log, run rows, edit report)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from rome_fast.edit.log import read_log
from rome_fast.edit.request import TENSOR_FIELDS, EditResult
from tests.models import EDIT
from tests.test_editor import make_editor


def test_the_record_holds_every_field_but_the_tensors_as_json() -> None:
    _, editor = make_editor("tiny-gpt2")
    result = editor.edit(EDIT, "p-rome")
    record = result.as_record()
    fields = {f.name for f in dataclasses.fields(EditResult)} - {*TENSOR_FIELDS, "update"}
    # a one-site update keeps its layer and module at the top, as rank-one records had them
    expected = fields | {"sites", "layer", "module_name"}
    assert set(record) == expected, (
        f"missing {expected - set(record)}, extra {set(record) - expected}"
    )
    assert json.loads(json.dumps(record)) == record, "the record does not survive JSON"
    (site,) = record["sites"]
    assert site == {
        "layer": result.layer,
        "module_name": result.module_name,
        "rank": 1,
        "delta_norm": result.delta_norm,
    }


def test_a_result_read_back_from_the_log_equals_the_one_written(tmp_path: Path) -> None:
    _, editor = make_editor("tiny-gpt2")
    written = editor.edit(EDIT, "rome")
    editor.save_log(tmp_path)
    (read,) = read_log(tmp_path)
    assert read.as_record() == written.as_record()
    for key in TENSOR_FIELDS:
        assert torch.equal(getattr(read, key), getattr(written, key)), key
    for mine, theirs in zip(read.update, written.update, strict=True):
        assert torch.equal(mine.factors.left, theirs.factors.left)
        assert torch.equal(mine.factors.right, theirs.factors.right)
