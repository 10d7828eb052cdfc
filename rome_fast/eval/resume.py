"""Resuming a case file: its finished prefix, checked against this run's cases before the
file is cut to it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rome_fast.eval.data import EvalCase
from rome_fast.eval.files import read_lines, rewrite_lines


def resume_rows(
    path: Path, cases: Sequence[EvalCase], keep: int | None = None
) -> list[dict[str, Any]]:
    """The finished prefix of a case file (at most ``keep`` rows, and then exactly ``keep``),
    checked against ``cases`` before the file is cut to it: a refusal changes no file."""
    rows = read_lines(path)
    if keep is not None:
        rows = rows[:keep]
        if len(rows) != keep:
            raise ValueError(
                f"the checkpoint says {keep} edits are done but {path} holds {len(rows)} "
                "complete lines; the folder is damaged (no file was changed) — use a new --out"
            )
    for i, row in enumerate(rows):
        if i >= len(cases) or row.get("case_id") != cases[i].case_id:
            raise ValueError(
                f"{path}: line {i + 1} is case {row.get('case_id')!r}, but this run's "
                f"case {i} is {cases[i].case_id if i < len(cases) else None!r}; the "
                "folder belongs to another data slice — use a new --out"
            )
    rewrite_lines(path, rows)
    return rows
