"""Whether a downloaded file is the whole of what it claims to be, before it is kept.

A server that closes the connection early leaves a prefix of the file: with a
``Content-Length`` the byte count says so, without one only the content can. So a JSON data
set must load as a list of records that each hold the fields its readers need, and a
statistics ``.npz`` must open with the arrays the public format holds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rome_fast.infra.npz import NPZ_ERRORS, read_npz


class IncompleteDownload(ValueError):
    """The bytes that arrived are not the whole file; the message says what arrived."""


def check_length(received: int, announced: str | None) -> None:
    """``received`` bytes against the response's ``Content-Length`` header, where it has one."""
    if announced is not None and received != int(announced):
        raise IncompleteDownload(
            f"{received} of the {announced} bytes its Content-Length announced arrived "
            "(the server closed the connection early)"
        )


def check_json_records(path: Path, fields: Sequence[str]) -> None:
    """``path`` loads as a non-empty JSON list of objects that each hold ``fields``."""
    size = path.stat().st_size
    try:
        records = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise IncompleteDownload(f"the {size} bytes that arrived are not JSON ({error})") from None
    if not isinstance(records, list) or not records:
        raise IncompleteDownload(
            f"the {size} bytes that arrived are JSON but not a non-empty list of records"
        )
    for number, record in enumerate(records):
        missing = [f for f in fields if not isinstance(record, dict) or f not in record]
        if missing:
            raise IncompleteDownload(
                f"record {number} of the {size} bytes that arrived lacks {', '.join(missing)}"
            )


def check_npz_arrays(path: Path, arrays: Sequence[str]) -> None:
    """``path`` opens as an ``.npz`` whose ``arrays`` all read back."""
    size = path.stat().st_size
    try:
        held = read_npz(path)
    except NPZ_ERRORS as err:
        raise IncompleteDownload(
            f"the {size} bytes that arrived are not a readable .npz ({type(err).__name__}: {err})"
        ) from None
    missing = [a for a in arrays if a not in held]
    if missing:
        raise IncompleteDownload(
            f"the .npz that arrived ({size} bytes) lacks the arrays {', '.join(missing)}"
        )
