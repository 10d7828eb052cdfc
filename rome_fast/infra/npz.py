"""Reading an ``.npz`` whole, with the errors a damaged or truncated file raises."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

# What numpy and zipfile raise on an empty, truncated or foreign file.
NPZ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``; reading each checks its bytes against the zip's
    CRC. Raises one of ``NPZ_ERRORS`` when it is not a readable ``.npz``."""
    # Our own handle: np.load leaks its handle when a damaged zip fails to open.
    with path.open("rb") as handle:
        loaded = np.load(handle, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy: one array
            raise ValueError("it holds a single array")
        with loaded as data:
            return {key: data[key] for key in data.files}
