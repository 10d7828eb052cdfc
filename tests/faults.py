"""Fault injection for run folders: kill a run at the k-th write of one kind, resume it, and
compare with an uninterrupted run record for record.

A kill is simulated by raising :class:`Killed` (a ``BaseException``, so nothing in the
runner can swallow it) at the chosen write. With ``torn=True`` the write is left half done
first: half a JSON line without its newline, or a half-written temporary file that the
atomic rename never reaches, as a SIGKILL in the middle of the write would leave it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from torch import Tensor

from rome_fast.eval import files, runner
from rome_fast.eval.files import read_lines

# Every kind of write a run makes, by the name of the file written.
KINDS: dict[str, str] = {
    "config": r"config\.json",
    "reference": r"reference\.json",
    "case": r"(single|sequential)-[^/]+(?<!-final)\.jsonl",
    "checkpoint": r"sequential-[^/]+\.state\.pt",
    "glue": r"glue-[^/]+\.jsonl",
    "final": r"sequential-[^/]+-final\.jsonl",
    "summary": r"summary\.json",
}
# Fields that measure time: they differ between any two runs.
VOLATILE = {"timings", "edit_seconds", "edit_seconds_mean", "wall_seconds", "seconds_per_fact"}


class Killed(BaseException):
    """The simulated kill."""


def kind_of(path: Path) -> str:
    return next(kind for kind, pattern in KINDS.items() if re.fullmatch(pattern, path.name))


@contextmanager
def writes(
    monkeypatch: pytest.MonkeyPatch, kill: tuple[str, int] | None = None, torn: bool = True
) -> Iterator[Counter[str]]:
    """Count the run's writes by kind; with ``kill=(kind, k)``, kill it at the k-th one."""
    counts: Counter[str] = Counter()
    append_line, write_json = files.append_line, files.write_json
    checkpoint = runner.Runner._checkpoint

    def hit(path: Path, half: Callable[[], None]) -> None:
        kind = kind_of(path)
        counts[kind] += 1
        if kill == (kind, counts[kind]):
            if torn:
                half()
            raise Killed(f"killed at write {counts[kind]} of kind {kind} ({path.name})")

    def half_line(path: Path, row: Mapping[str, Any]) -> None:
        text = json.dumps(row)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(text[: len(text) // 2])

    def half_file(path: Path) -> None:
        path.with_name(path.name + ".tmp").write_text('{"torn": ')

    def counted_append(path: Path, row: Mapping[str, Any]) -> None:
        hit(path, lambda: half_line(path, row))
        append_line(path, row)

    def counted_json(path: Path, value: Any) -> None:
        hit(path, lambda: half_file(path))
        write_json(path, value)

    def counted_checkpoint(
        self: runner.Runner, path: Path, n_done: int, weights: Mapping[str, Tensor]
    ) -> None:
        hit(path, lambda: half_file(path))
        checkpoint(self, path, n_done, weights)

    with monkeypatch.context() as patch:
        patch.setattr(runner, "append_line", counted_append)
        patch.setattr(runner, "write_json", counted_json)
        patch.setattr(runner.Runner, "_checkpoint", counted_checkpoint)
        yield counts


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def records(out: Path) -> dict[str, Any]:
    """Every record a run folder holds (each JSON-lines file, the summary, the reference),
    without the fields that measure time."""
    found: dict[str, Any] = {
        path.name: _stable(read_lines(path)) for path in sorted(out.glob("*.jsonl"))
    }
    for name in ("summary.json", "reference.json"):
        found[name] = _stable(json.loads((out / name).read_text()))
    return found


def first_difference(  # noqa: PLR0911  one return per kind of node
    expected: Any, got: Any, where: str = ""
) -> str | None:
    """Where two record trees first differ (a readable failure message), or None."""
    if isinstance(expected, dict) and isinstance(got, dict):
        if expected.keys() != got.keys():
            return f"{where}: keys {sorted(expected)} != {sorted(got)}"
        for key in expected:
            found = first_difference(expected[key], got[key], f"{where}/{key}")
            if found:
                return found
        return None
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            return f"{where}: {len(expected)} records uninterrupted, {len(got)} after resume"
        for i, (a, b) in enumerate(zip(expected, got, strict=True)):
            found = first_difference(a, b, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if expected == got else f"{where}: {expected!r} != {got!r}"
