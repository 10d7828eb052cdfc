"""Checks the batched methods' hyperparameters share: one message per mistake, naming the fix."""

from __future__ import annotations

import math
from collections.abc import Sequence


def check_layers(method: str, layers: Sequence[int]) -> None:
    """Edited layers: at least one, distinct, non-negative, in increasing order (the schedule
    edits them in this order and divides the residual by the layers left)."""
    if not layers or any(layer < 0 for layer in layers) or list(layers) != sorted(set(layers)):
        raise ValueError(
            f"{method} layers must be distinct non-negative layer indices in increasing order, "
            f"got {list(layers)}; e.g. layers=(3, 4, 5)"
        )


def check_weight(method: str, name: str, value: float, *, zero_allowed: bool) -> None:
    """A regularization weight: finite and positive (or zero where the method allows it)."""
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
        bound = "≥ 0" if zero_allowed else "> 0"
        raise ValueError(f"{method} {name} must be a finite number {bound}, got {value}")
