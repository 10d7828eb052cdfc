"""Facts grouped by suffix width (``rome_fast.edit.width_groups``): the grouping is a partition
of the facts whose cost is the least over every partition (found by trying them all on small
cases), within the cap on a group's cells."""

from __future__ import annotations

from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from rome_fast.edit.width_groups import width_groups


def partitions(items: list[int]) -> Iterator[list[list[int]]]:
    """Every set partition of ``items`` (Bell(n) of them)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for smaller in partitions(rest):
        for i in range(len(smaller)):
            yield [*smaller[:i], [first, *smaller[i]], *smaller[i + 1 :]]
        yield [[first], *smaller]


def cost(groups: list[list[int]], widths: list[int], rows: int, per_group: float) -> float:
    return sum(len(g) * rows * max(widths[f] for f in g) + per_group for g in groups)


def fits(groups: list[list[int]], widths: list[int], rows: int, max_cells: int) -> bool:
    return all(
        len(g) == 1 or len(g) * rows * max(widths[f] for f in g) <= max_cells for g in groups
    )


@settings(max_examples=60, deadline=None)
@given(
    widths=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    rows=st.integers(1, 4),
    per_group=st.sampled_from([0.0, 3.0, 40.0]),
    max_cells=st.integers(1, 120),
)
def test_the_grouping_is_a_least_cost_partition(
    widths: list[int], rows: int, per_group: float, max_cells: int
) -> None:
    groups = width_groups(widths, rows, per_group, max_cells)
    assert sorted(f for g in groups for f in g) == list(range(len(widths)))
    assert fits(groups, widths, rows, max_cells)
    allowed = [p for p in partitions(list(range(len(widths)))) if fits(p, widths, rows, max_cells)]
    least = min(cost(p, widths, rows, per_group) for p in allowed)
    assert cost(groups, widths, rows, per_group) == least


def test_no_group_cost_groups_equal_widths() -> None:
    """With no cost of its own, a group per width: no fact runs a padded column."""
    widths = [4, 3, 6, 3, 4, 9]
    assert width_groups(widths, 22, 0.0, 1 << 30) == [[1, 3], [0, 4], [2], [5]]
