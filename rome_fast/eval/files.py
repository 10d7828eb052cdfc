"""Run-folder files: JSON written atomically, read back with errors that name the file."""

from __future__ import annotations

import json
import os
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
