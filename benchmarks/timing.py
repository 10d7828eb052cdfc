"""Timing on a device: rounds with the device synchronized around each."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    fn: Callable[[], Any], device: torch.device, rounds: int, warmup: int = 1
) -> dict[str, Any]:
    """Seconds of each round (after ``warmup`` untimed calls) and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    sync(device)
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        sync(device)
        seconds.append(time.perf_counter() - start)
    # The median resists a stall caused by another process; every round is kept in the JSON.
    return {
        "seconds": seconds,
        "median": float(np.median(seconds)),
        "min": min(seconds),
        "result": result,
    }
