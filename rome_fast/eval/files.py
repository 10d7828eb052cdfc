"""Run-folder files: JSON written atomically, JSON lines appended one flushed line at a time,
read back with errors that name the file (a half-written last line is dropped)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` to ``path`` through a temporary file and a rename, so that a kill
    leaves either the old file or the new one, never an empty or half-written one."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(value, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def read_json(path: Path | Traversable, what: str = "JSON object") -> Any:
    """The JSON in ``path``; an unreadable file is a ``ValueError`` naming it and the fix."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); it should hold a {what} — remove the file "
            "(or the whole folder) and rerun"
        ) from None


def read_json_object(path: Path | Traversable, what: str = "JSON object") -> dict[str, Any]:
    """Like :func:`read_json`, but the top level must be an object."""
    value = read_json(path, what)
    if not isinstance(value, dict):
        raise ValueError(
            f"{path} holds a JSON {type(value).__name__}, not the {what} expected; "
            "pass the right file"
        )
    return value


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of ``path``; a half-written last line is ignored."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a kill while writing: this line and anything after it is redone
    return rows


def rewrite_lines(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def append_line(path: Path, row: Mapping[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
