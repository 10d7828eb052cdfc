"""The printed tables: every metric column lines up, whatever the variants are called."""

from __future__ import annotations

import pytest

from rome_fast.eval.report import format_table
from rome_ref.metrics import TABLE_METRICS

NAMES = ("rome", "r-rome", "user_variant:closed_form_r_rome", "module.with.dots:function@key")


def column_ends(line: str, cells: list[str]) -> list[int]:
    """Where each cell ends in ``line``, searched left to right."""
    ends, start = [], 0
    for cell in cells:
        at = line.index(cell, start)
        ends.append(at + len(cell))
        start = at + len(cell)
    return ends


@pytest.mark.parametrize("long_name", NAMES)
def test_metric_columns_line_up_under_their_header(long_name: str) -> None:
    rows = {
        "rome": dict.fromkeys(TABLE_METRICS, 1.0) | {"collapses": 0, "failed": 0},
        long_name: dict.fromkeys(TABLE_METRICS, 99.5) | {"collapses": 3, "failed": 1},
    }
    lines = format_table(rows, "title").splitlines()
    header = lines[2]
    header_ends = column_ends(header, [f"{m}↑" for m in TABLE_METRICS] + ["collapses", "failed"])
    for line, row in zip(lines[4:], rows.values(), strict=True):
        cells = [f"{row[m]:.2f}" for m in TABLE_METRICS] + [
            str(row["collapses"]),
            str(row["failed"]),
        ]
        # the variant name comes first; the cells are searched after it
        name = line.split()[0]
        ends = column_ends(line[len(name) :], cells)
        assert [e + len(name) for e in ends] == header_ends, (
            f"columns do not line up for {long_name!r}:\n" + "\n".join(lines)
        )
