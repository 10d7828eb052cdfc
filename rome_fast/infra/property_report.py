"""The report of a property battery, shared by ``check_variant`` and ``check_batched``: one
row per property, then each failure with the smallest case found and its reproducer; the
reading of a numeric property (its value, the floor measured on the same case, the bound)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

Status = Literal["passed", "failed", "skipped", "noted"]
P = TypeVar("P")  # the parameters a battery draws a case from


@dataclass(frozen=True)
class Reading:
    """One numeric property on one case: passes when ``value ≤ margin × floor``."""

    value: float  # the misfit of what is checked
    floor: float  # the largest misfit a correct computation reaches on this case, in this dtype
    margin: float  # the battery's MARGIN, justified by its measured table

    @property
    def bound(self) -> float:
        return self.margin * self.floor

    @property
    def passed(self) -> bool:
        return self.value <= self.bound  # a NaN misfit fails

    @property
    def ratio(self) -> float:
        return self.value / self.floor

    def describe(self) -> str:
        return (
            f"{self.value:.3g} (floor {self.floor:.3g}, bound {self.bound:.3g} = "
            f"{self.margin:g} × floor; value/floor {self.ratio:.3g})"
        )


def worst(readings: Sequence[Reading]) -> str:
    """The passing case closest to its bound, or "" for a property without a floor."""
    if not readings:
        return ""
    closest = max(readings, key=lambda r: r.ratio)
    return f"worst of {len(readings)} cases: {closest.describe()}"


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
