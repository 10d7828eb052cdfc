"""Where the data files live: ``$ROME_DATA_DIR``, else the default data folder.

Kept apart from the loaders so that the statistics corpus, the evaluation data and the GLUE
checks find their files the same way without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "ROME_DATA_DIR"


def default_data_dir() -> Path:
    """``$ROME_DATA_DIR``, else ``<repo root>/../shared/data``."""
    if DATA_ENV in os.environ:
        return Path(os.environ[DATA_ENV])
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"
