"""No text file of the project holds an unresolved merge: a conflict marker committed into a
document shows both sides to the reader and neither is checked."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("rome_ref", "rome_fast", "tests", "benchmarks", "docs", "fixtures", ".ci")
SUFFIXES = {".py", ".md", ".txt", ".toml", ".json", ".yaml", ".yml", ".cfg", ""}
MARKER = re.compile(r"^(<{7} |>{7} |={7}$)", re.MULTILINE)


def project_texts() -> list[Path]:
    files = [p for p in ROOT.glob("*") if p.is_file() and p.suffix in SUFFIXES]
    for folder in FOLDERS:
        files += [
            p
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts
        ]
    return files


def test_no_file_holds_a_conflict_marker() -> None:
    files = project_texts()
    assert any(p.name == "README.md" for p in files)
    found = [
        f"{p.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
        for p in files
        for text in [p.read_text(errors="replace")]
        for m in MARKER.finditer(text)
    ]
    assert not found, f"unresolved merge markers at {found}"
