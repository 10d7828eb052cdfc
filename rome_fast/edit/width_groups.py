"""Facts grouped by suffix width, so that the target loop pads less.

In one batch every row runs as many suffix columns as the widest fact needs (the columns from
the subject-last token on, ``value_batch.suffix_widths``); the facts' optimizations are
independent (disjoint gradients, elementwise Adam), so they may run in several batches. Each
batch costs its rows times its width in suffix cells, plus a fixed cost of its own (its prefix
and clean passes, and the per-iteration work that does not grow with its rows). The grouping
here is the least total cost over the facts sorted by width (each group a run of that order:
an optimal partition never interleaves widths), by dynamic programming. A cap on a group's
cells bounds the activations its backward pass keeps (and, on a CPU, keeps them nearer the
cache).
"""

from __future__ import annotations

from collections.abc import Sequence


def width_groups(
    widths: Sequence[int], rows_per_fact: int, group_cost_cells: float, max_cells: int
) -> list[list[int]]:
    """The facts (indices into ``widths``) in groups of least total cost: Σ over groups of
    (facts · rows_per_fact · widest width + group_cost_cells), no group over ``max_cells``
    cells unless it is a single fact. Each group ascending by width, ties in fact order; every
    fact in exactly one group."""
    order = sorted(range(len(widths)), key=lambda fact: (widths[fact], fact))
    # best[j]: the least cost of the first j facts of ``order``; start[j]: where its last
    # group starts
    best = [0.0] + [float("inf")] * len(order)
    start = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        widest = widths[order[end - 1]]  # the group order[first:end]'s width
        for first in range(end - 1, -1, -1):  # the group grows leftwards
            cells = (end - first) * rows_per_fact * widest
            if cells > max_cells and first < end - 1:
                break
            cost = best[first] + cells + group_cost_cells
            if cost <= best[end]:  # on a tie, the larger group: fewer batches
                best[end], start[end] = cost, first
    groups: list[list[int]] = []
    end = len(order)
    while end > 0:
        groups.append(order[start[end] : end])
        end = start[end]
    return groups[::-1]
