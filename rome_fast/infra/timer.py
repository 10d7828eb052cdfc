"""Named phases timed into one dict (an edit's ``timings``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseTimer:
    def __init__(self, timings: dict[str, float] | None = None) -> None:
        self.timings: dict[str, float] = dict(timings or {})

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Times the block into ``timings[name]``, also when it raises."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = time.perf_counter() - start
