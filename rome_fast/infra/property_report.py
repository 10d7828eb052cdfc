"""The report of a property battery, shared by ``check_variant`` and ``check_batched``: one
row per property, then each failure with the smallest case found and its reproducer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

Status = Literal["passed", "failed", "skipped", "noted"]
P = TypeVar("P")  # the parameters a battery draws a case from


@dataclass(frozen=True)
class PropertyResult(Generic[P]):
    name: str
    status: Status
    message: str = ""
    params: P | None = None  # the smallest failing case found
    reproducer: str = ""  # a snippet that runs as pasted (with its lead), or why there is none


def all_passed(results: Sequence[PropertyResult[P]]) -> bool:
    """No property failed (skipped and noted rows do not count against it)."""
    return all(r.status != "failed" for r in results)


def failed_names(results: Sequence[PropertyResult[P]]) -> tuple[str, ...]:
    return tuple(r.name for r in results if r.status == "failed")


def report_text(head: str, results: Sequence[PropertyResult[P]], lead: str = "") -> str:
    """``head``, the rows lined up, then each failure's case and ``lead`` + reproducer."""
    width = max(len(r.name) for r in results)
    rows = [f"  {r.name:<{width}}  {r.status:<7}  {r.message}".rstrip() for r in results]
    failures = [
        f"\n{r.name} fails on {r.params}; {lead}{r.reproducer}"
        for r in results
        if r.status == "failed"
    ]
    return "\n".join([head, *rows, *failures])
