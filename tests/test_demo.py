"""``rome demo`` end to end on a tiny random model: the table, the JSON and the figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rome_fast.cli.main import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_demo_writes_its_table_json_and_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROME_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    argv = ["demo", "--model", "random:tiny-gpt2", "--stats-samples", "8", "--out", str(out)]
    assert main([*argv, "--variants", "rome,r-rome"]) == 0
    edits = json.loads((out / "demo.json").read_text())["edits"]
    assert {e["variant"] for e in edits} == {"rome", "r-rome"}
    table = (out / "table.txt").read_text()
    assert all(e["request"]["subject"] in table for e in edits), table
    assert (out / "demo.png").read_bytes().startswith(PNG_SIGNATURE)
