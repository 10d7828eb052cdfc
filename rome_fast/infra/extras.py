"""Optional dependencies, imported only when a command asks for them."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An option needs a package that is not installed; the message says how to install it."""


def import_ray() -> ModuleType:
    """``ray``, or a :class:`MissingExtraError` naming the install command."""
    try:
        return importlib.import_module("ray")
    except ImportError as err:
        raise MissingExtraError(
            "--workers and --ray-address run on Ray, which is not installed: "
            "pip install 'rome-verify[ray]'"
        ) from err
