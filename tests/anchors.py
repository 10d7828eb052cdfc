"""Where the third-party code under test lives: ``$ROME_ANCHORS_DIR``, else ``../shared/anchors``.

It cannot be committed (it is code under test, not ours). Tests that import it carry the
``anchors`` marker; without the folder, tests/conftest.py deselects them and reports one
group skip, so a test reaching :func:`checkout` without the folder lacks its marker.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ANCHORS_ENV = "ROME_ANCHORS_DIR"
REPO = Path(__file__).resolve().parents[1]


def anchors_root() -> Path:
    return Path(os.environ.get(ANCHORS_ENV, REPO.parent / "shared" / "anchors"))


def anchors_present() -> bool:
    return anchors_root().is_dir()


def checkout(name: str) -> Path:
    """The public code's checkout ``name`` (``rebuilding-rome``, ``easyedit``); fails the
    test, naming the fix, when it is missing."""
    folder = anchors_root() / name
    if not anchors_present():
        pytest.fail(f"no third-party code at {anchors_root()}: mark this test anchors")
    if not folder.is_dir():
        pytest.fail(f"no {name} checkout in {anchors_root()} (${ANCHORS_ENV} is incomplete)")
    return folder
