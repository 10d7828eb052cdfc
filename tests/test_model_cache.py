"""The converted-model cache: an interrupted conversion leaves no temporary folder, and one
left by a killed process is removed by the next conversion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rome_fast.model.loader import write_folder_once


def write_files(folder: Path) -> None:
    folder.mkdir()
    (folder / "model.safetensors").write_text("weights")


def test_interrupted_conversion_removes_its_temporary_folder(tmp_path: Path) -> None:
    target = tmp_path / "models" / "converted"

    def interrupted(folder: Path) -> None:
        write_files(folder)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_folder_once(target, interrupted)
    assert list(target.parent.iterdir()) == []


def test_temporary_folder_of_a_dead_process_is_removed(tmp_path: Path) -> None:
    target = tmp_path / "converted"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    stale = tmp_path / f"converted.tmp{int(dead.stdout)}"
    write_files(stale)
    write_folder_once(target, write_files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]
    assert (target / "model.safetensors").read_text() == "weights"
