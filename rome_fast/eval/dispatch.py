"""The Ray driver's bookkeeping of single-mode units (a case for some variants, or a batched
method's batch), without Ray: which units wait, which are in flight on which actor, and what
an actor's death puts back in the queue.

Every unfinished unit is in exactly one place, queued or in flight, so a dead actor's units
are computed once more and counted once as retried (``rome_fast.eval.distributed`` submits
the units and collects the rows; ``tests/test_dispatch.py`` replays its loop without Ray).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_ATTEMPTS = 3  # a case (or stream) whose worker died this often fails the run


@dataclass
class Unit:
    """One case for some variants (or one batch, ``index`` its number): what one actor call
    computes."""

    index: int
    variants: list[str]
    attempts: int = 0  # how many of its workers died


@dataclass(frozen=True)
class Flight:
    """A unit submitted to the actor in ``slot``."""

    slot: int
    actor: Any
    unit: Unit


class Dispatch:
    """The queue of units and the units in flight, keyed by their pending result (a Ray ref);
    ``what`` names a unit's index in errors."""

    def __init__(
        self, todo: Mapping[int, Sequence[str]], per_actor: int, what: str = "case index"
    ) -> None:
        self.per_actor = per_actor  # units in flight per actor
        self.what = what
        self.queue = deque(Unit(i, list(v)) for i, v in sorted(todo.items()) if v)
        self.in_flight: dict[Any, Flight] = {}  # ref -> the flight it answers

    def want(self, variant: str, index: int) -> None:
        """Queue ``(variant, index)`` first unless a unit queued or in flight holds it."""
        units = [*self.queue, *(f.unit for f in self.in_flight.values())]
        if not any(u.index == index and variant in u.variants for u in units):
            self.queue.appendleft(Unit(index, [variant]))

    def submit(self, actors: Sequence[Any], start: Callable[[Any, Unit], Any]) -> None:
        """Top every actor up to ``per_actor`` units in flight from the front of the queue;
        ``start(actor, unit)`` submits one and returns its ref."""
        for slot, actor in enumerate(actors):
            busy = sum(f.actor is actor for f in self.in_flight.values())
            for _ in range(self.per_actor - busy):
                if not self.queue:
                    return
                unit = self.queue.popleft()
                self.in_flight[start(actor, unit)] = Flight(slot, actor, unit)

    def landed(self, ref: Any) -> Flight:
        """The flight ``ref`` answers, no longer in flight (its rows arrived or its actor died)."""
        return self.in_flight.pop(ref)

    def lost(self, flight: Flight) -> list[Unit]:
        """``flight``'s actor died: its unit and every other unit in flight on that actor go
        back to the front of the queue, in case order; returns them. A RuntimeError once a
        unit's worker died ``MAX_ATTEMPTS`` times."""
        lost = [flight.unit]
        for ref, other in list(self.in_flight.items()):
            if other.actor is flight.actor:
                lost.append(other.unit)
                del self.in_flight[ref]
        for unit in sorted(lost, key=lambda u: u.index, reverse=True):
            unit.attempts += 1
            if unit.attempts >= MAX_ATTEMPTS:
                raise RuntimeError(
                    f"{self.what} {unit.index}: its worker died {unit.attempts} times; "
                    "see the Ray logs (out of memory?)"
                )
            self.queue.appendleft(unit)
        return lost
