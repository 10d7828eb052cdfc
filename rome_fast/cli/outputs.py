"""What a command writes besides its run folder: the one JSON file of ``--json FILE``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rome_fast.eval.files import write_json


def write_json_output(path: Path, value: Any) -> None:
    """Write ``value`` to ``path`` (its folder made if missing; atomic: a kill leaves the old
    file or the new one) and say so. The path was checked when the command started
    (``validate.check_out_file``), before anything ran."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, value)
    print(f"wrote {path}")
