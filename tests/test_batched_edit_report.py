"""The batched editor's results command (tests/batched_edit_report.py) runs as documented, on
a tiny model with 4 facts, so that the command of docs/results/batched-*.md cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rome_fast.edit.batch_keys import KEY_CHOICES
from rome_fast.hparams.batched import METHODS
from tests import batched_edit_report

ROWS = {"keys": KEY_CHOICES, "methods": METHODS}


@pytest.mark.parametrize("table", sorted(ROWS))
def test_report_writes_one_row_per_choice(table: str, tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    out.write_text(f"old table\n\n{batched_edit_report.NOTES}\n\nkept by hand.\n")
    tiny = ["--model", "random:tiny-gpt2", "--facts", "4", "--v-steps", "2"]
    argv = ["--table", table, *tiny, "--out", str(out)]
    batched_edit_report.main(argv)
    text = out.read_text()
    assert f"--table {table} --model random:tiny-gpt2 --facts 4" in text  # the command
    # the data folder is named, not its path, with the file's size: sample or full CounterFact
    assert re.search(r"`ROME_DATA_DIR=<data folder> python -m", text)
    assert re.search(r"under `\$ROME_DATA_DIR` \([\d,]+ records\)", text)

    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    firsts = [row.split(" | ")[0].removeprefix("| ") for row in rows[1:]]
    assert sorted(firsts) == sorted(ROWS[table])  # one row per key choice or method
    assert not any("nan" in row or "inf" in row for row in rows)  # every measured cell finite
    assert "old table" not in text  # the table is rewritten
    assert text.rstrip().endswith("kept by hand.")  # the reading below it is kept
