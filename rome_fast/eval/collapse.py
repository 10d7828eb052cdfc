"""Collapse detection: an edit looks disabling when its |Δ| is far above the running median
or the model's generation entropy drops below a threshold."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from rome_fast.eval.config import RunConfig


def collapse_reasons(
    delta_norm: float | None,
    history: Sequence[float],
    entropy: float,
    threshold: float,
    cfg: RunConfig,
) -> list[str]:
    """Why an edit looks disabling: |Δ| far above the running median, or entropy too low."""
    reasons = []
    if delta_norm is not None and len(history) >= cfg.collapse_min_history:
        median = statistics.median(history)
        if median > 0 and delta_norm > cfg.collapse_factor * median:
            reasons.append(
                f"|Δ| {delta_norm:.3g} > {cfg.collapse_factor:g} × running median {median:.3g}"
            )
    if entropy < threshold:
        reasons.append(f"generation entropy {entropy:.3g} < threshold {threshold:.3g}")
    return reasons


def entropy_threshold(reference: Mapping[str, Any], cfg: RunConfig) -> float:
    if cfg.collapse_entropy is not None:
        return cfg.collapse_entropy
    return cfg.collapse_entropy_ratio * float(reference["ngram_entropy"])
