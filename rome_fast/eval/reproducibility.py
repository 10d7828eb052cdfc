"""What makes two runs' records comparable: the kernel settings float32 CPU results round
by (recorded with every run) and the wall-clock fields that differ between any two runs."""

from __future__ import annotations

from typing import Any

import torch

TIMING_KEYS = frozenset({"timings", "edit_seconds"})  # wall-clock: differ between any two runs


def kernel_settings() -> dict[str, Any]:
    """What float32 CPU results round by, besides the inputs: intra-op threads and the
    measured oneDNN-or-MKL choice (``rome_fast.model.linear``), recorded with every run."""
    from rome_fast.model.linear import onednn_is_faster

    return {"threads": torch.get_num_threads(), "onednn": onednn_is_faster()}


def without_timings(value: Any) -> Any:
    """A record (or any JSON value) without its wall-clock times: what two runs of the same
    command, in one process or sharded over workers, must have in common."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value
