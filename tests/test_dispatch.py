"""The Ray driver's bookkeeping (``rome_fast.eval.dispatch``) without Ray: the loop of
``distributed.ShardedSingle`` replayed with actors as names and refs as ``(actor, index)``,
so that an actor's death can be placed exactly; and ``distributed.ShardedBatches`` itself
driven over stand-ins for Ray, its actors and its pool. Runs in the default suite."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any, cast

import pytest
from tqdm import tqdm

from rome_fast.eval.dispatch import MAX_ATTEMPTS, Dispatch, Unit
from rome_fast.eval.distributed import Pool, ShardedBatches

VARIANTS = ["rome", "r-rome"]
N_CASES = 5
PER_ACTOR = 2  # as ShardedSingle.IN_FLIGHT


def start(actor: str, unit: Unit) -> tuple[str, int]:
    return (actor, unit.index)


def drive(dispatch: Dispatch, actors: list[str], deaths: int) -> tuple[Counter[int], int]:
    """Every unit through to its rows, the oldest flight landing first; an actor whose name
    has fewer than ``deaths`` primes dies (then its slot gets ``name'``). Returns how often
    each case was computed and how many units were counted as retried."""
    computed: Counter[int] = Counter()
    retried = 0
    while dispatch.queue or dispatch.in_flight:
        dispatch.submit(actors, start)
        flight = dispatch.landed(next(iter(dispatch.in_flight)))
        if flight.actor.count("'") < deaths:
            retried += len(dispatch.lost(flight))
            actors[flight.slot] = flight.actor + "'"
        else:
            computed[flight.unit.index] += len(flight.unit.variants)
    return computed, retried


def test_a_dead_actors_cases_are_requeued_once_each() -> None:
    dispatch = Dispatch(dict.fromkeys(range(4), VARIANTS), PER_ACTOR)
    dispatch.submit(["a", "b"], start)
    assert list(dispatch.in_flight) == [("a", 0), ("a", 1), ("b", 2), ("b", 3)]
    lost = dispatch.lost(dispatch.landed(("a", 0)))
    assert len(lost) == 2  # the case that failed and the one queued behind it on the same actor
    assert list(dispatch.in_flight) == [("b", 2), ("b", 3)], "a requeued case stayed in flight"
    assert [u.index for u in dispatch.queue] == [0, 1]
    assert [u.attempts for u in dispatch.queue] == [1, 1]


def test_a_death_costs_each_lost_case_one_recomputation_and_one_retry() -> None:
    dispatch = Dispatch(dict.fromkeys(range(N_CASES), VARIANTS), PER_ACTOR)
    computed, retried = drive(dispatch, ["a", "b"], deaths=1)
    # every case computed once for both variants; "a" and "b" each die once with 2 in flight
    assert computed == dict.fromkeys(range(N_CASES), len(VARIANTS))
    assert retried == 2 * PER_ACTOR


def test_a_case_whose_worker_keeps_dying_fails_the_run() -> None:
    dispatch = Dispatch({0: VARIANTS}, PER_ACTOR)
    with pytest.raises(RuntimeError, match=f"case index 0: its worker died {MAX_ATTEMPTS} times"):
        drive(dispatch, ["a"], deaths=MAX_ATTEMPTS)


def test_a_row_asked_for_is_queued_once_first() -> None:
    dispatch = Dispatch({0: VARIANTS, 1: ["rome"]}, PER_ACTOR)
    dispatch.want("r-rome", 1)  # not held by any unit: queued first
    dispatch.want("rome", 1)  # held by the queued unit of case 1
    dispatch.submit(["a"], start)
    dispatch.want("rome", 0)  # held by a unit in flight
    assert [(u.index, u.variants) for u in dispatch.queue] == [(1, ["rome"])]
    assert [f.unit.variants for f in dispatch.in_flight.values()] == [["r-rome"], VARIANTS]


# ------------------------------------------------ a batched method's batches (ShardedBatches)

SPANS = [range(0, 2), range(2, 4), range(4, 6), range(6, 7)]  # 7 facts in batches of 2


def rows_of(batch: int) -> list[dict[str, Any]]:
    return [{"index": i} for i in SPANS[batch]]


class Died(Exception):
    """Stands in for Ray's RayActorError: the actor is gone."""


class StandInActor:
    """An actor answering ``single_batch.remote(batch)`` with a ref, computed when fetched."""

    def __init__(self, name: str, dead: bool) -> None:
        self.name, self.dead = name, dead
        self.single_batch = SimpleNamespace(remote=lambda batch: (self, batch))


class StandInRay:
    """``ray.wait`` and ``ray.get`` over the stand-in refs: the newest flight lands first,
    so that batches complete out of order; ``computed`` lists the batches each answered."""

    exceptions = SimpleNamespace(RayActorError=Died, RayTaskError=Died)

    def __init__(self) -> None:
        self.computed: list[int] = []

    def wait(self, refs: list[Any], num_returns: int) -> tuple[list[Any], list[Any]]:
        return refs[-num_returns:], refs[:-num_returns]

    def get(self, ref: tuple[StandInActor, int]) -> list[dict[str, Any]]:
        actor, batch = ref
        if actor.dead:
            raise Died(actor.name)
        # A driver that never gets the batch it waits for would ask for batches forever.
        assert len(self.computed) < 2 * len(SPANS), f"batches computed {self.computed}"
        self.computed.append(batch)
        return rows_of(batch)


class StandInPool:
    """``distributed.Pool``'s part that ``ShardedBatches`` uses: a dead actor's slot gets a
    live one, and the cases lost with it are counted."""

    def __init__(self, actors: list[StandInActor]) -> None:
        self.ray, self.actors, self.retried = StandInRay(), actors, 0

    def replace(self, slot: int, actor: StandInActor, lost_cases: int) -> StandInActor:
        self.retried += lost_cases
        self.actors[slot] = StandInActor(actor.name + "'", dead=False)
        return self.actors[slot]


def test_sharded_batches_come_in_batch_order_each_computed_once_its_facts_retried() -> None:
    """Batches 1-3 left (batch 0 on file); actor "a" is dead with batches 1 and 2 in flight
    (4 facts), "b" answers batch 3, newest first: rows come back in batch order, each batch
    computed once by a live actor, and the retried count is the dead actor's facts."""
    pool = StandInPool([StandInActor("a", dead=True), StandInActor("b", dead=False)])
    bar = tqdm(disable=True)
    sharded = ShardedBatches(cast(Pool, pool), "memit", [1, 2, 3], SPANS, bar)
    rows = [sharded.single_batch(batch) for batch in (1, 2, 3)]
    assert rows == [rows_of(batch) for batch in (1, 2, 3)]
    assert sorted(pool.ray.computed) == [1, 2, 3]
    assert pool.retried == len(SPANS[1]) + len(SPANS[2])
