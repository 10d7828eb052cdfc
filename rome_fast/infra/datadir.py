"""Where the data files live: ``--data`` paths as given, else the data folder.

The data folder is ``$ROME_DATA_DIR`` when set, else ``data/`` in the user cache folder
(``$ROME_CACHE_DIR``, default ``~/.cache/rome-verify``), where ``rome data fetch`` puts the
public files. Kept apart from the loaders so that the statistics corpus, the evaluation data
and the GLUE checks find their files the same way without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "ROME_DATA_DIR"
CACHE_ENV = "ROME_CACHE_DIR"
HOW_TO_GET = (
    f"download the public files with `rome data fetch counterfact|zsre|stats` (into the user "
    f"cache), or set {DATA_ENV} to a folder that holds them"
)


def cache_dir() -> Path:
    """The user cache folder: converted models, statistics, fetched data (``ROME_CACHE_DIR``)."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "rome-verify"))


def default_data_dir() -> Path:
    """``$ROME_DATA_DIR``, else ``<user cache>/data``."""
    if DATA_ENV in os.environ:
        return Path(os.environ[DATA_ENV])
    return cache_dir() / "data"


def describe_data_dir() -> str:
    """Which data folder is in use and why, for error messages."""
    source = f"${DATA_ENV}" if DATA_ENV in os.environ else f"the user cache; {DATA_ENV} unset"
    return f"{default_data_dir()} ({source})"
