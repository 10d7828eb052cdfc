"""Content digests of the files a command reads: a file changed under the same path must
not pass for the one a run or a download recorded."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """SHA-256 of the file's bytes, read in 1 MiB chunks (statistics files reach gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
