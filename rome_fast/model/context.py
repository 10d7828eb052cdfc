"""The model's context length (the one reader of its configuration's fields), and a refusal
that names it for inputs that do not fit.

Past its context a GPT-2 fails with an ``IndexError`` in the position embedding, and a
rotary model runs on silently with positions it was never trained on: both are refused.
"""

from __future__ import annotations

from typing import Any

from torch import nn

_LIMIT_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length")


def context_limit(model: nn.Module) -> int | None:
    """Tokens the model's configuration allows in one sequence (None: it states no limit)."""
    config: Any = getattr(model, "config", None)
    for name in _LIMIT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def context_length(model: nn.Module) -> int:
    """``context_limit`` where a length is required (the statistics truncate documents to it)."""
    limit = context_limit(model)
    if limit is None:
        raise ValueError(
            f"the model's configuration states no context length (none of {_LIMIT_FIELDS}); "
            "pass max_length="
        )
    return limit


def check_fits(model: nn.Module, n_tokens: int, what: str) -> None:
    """Refuse ``n_tokens`` (of ``what``) beyond the model's context."""
    limit = context_limit(model)
    if limit is not None and n_tokens > limit:
        raise ValueError(
            f"{what} needs {n_tokens} tokens, more than this model's context of {limit} "
            "tokens; shorten it"
        )
