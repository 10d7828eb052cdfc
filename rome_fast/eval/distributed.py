"""``rome eval --workers N`` / ``--ray-address ADDRESS``: a run's cases on Ray actors.

Each actor (:class:`EvalWorker`) loads the model once, holds one device (a GPU where the
cluster has them, else a CPU) and computes rows; the driver alone writes the run folder,
through the same :class:`~rome_fast.eval.runner.Runner` loops as a run in one process, so the
files, their order, the collapse flags and resuming are those of that run. Single-edit cases
are sharded over the actors (prefetched, any completion order, written in case order); a
sequential stream (one per variant) goes to one actor, since its edits depend on each other.
A batched method's runs (``rome_fast.eval.batch_runs``, ours: an editor under test's batches
stay in one process) go the same ways through the same loops: single-mode batches sharded as
cases are, each written on an actor's unedited model; the stream on one actor, its batches
logged and checkpointed by the driver, which on resume reads the logs and sends them to the
actor to replay.

A worker that dies loses nothing: its unfinished cases go to a replacement actor (the
bookkeeping is ``rome_fast.eval.dispatch``, pure and tested without Ray); a stream
restarts from its last checkpoint (the rows after it are redone, as on a resumed run). The
summary's ``execution`` says how many cases were retried.

Ray itself is reached through ``rome_fast.infra.cluster``, imported only when asked for.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

import torch
from tqdm import tqdm

from rome_fast.edit.batch_result import Applied
from rome_fast.eval.batch_runs import BatchRuns, InProcess, our_editor
from rome_fast.eval.config import RunConfig
from rome_fast.eval.data import EvalCase
from rome_fast.eval.dispatch import MAX_ATTEMPTS, Dispatch, Unit
from rome_fast.eval.files import read_lines
from rome_fast.eval.protocols import EditOutcome
from rome_fast.eval.reproducibility import kernel_settings
from rome_fast.eval.runner import Runner, RunnerStream
from rome_fast.infra.cluster import (
    Cluster,
    WorkerLost,
    actor_factory,
    connected,
    fetch,
    worker_count,
)
from rome_fast.model.linear import onednn_is_faster, pin_onednn

if TYPE_CHECKING:
    from rome_fast.edit.editor import Editor
    from rome_fast.model.loader import LoadedModel

# ---------------------------------------------------------------- the worker


@dataclass(frozen=True)
class WorkerSpec:
    """What an actor needs to compute the rows this process would: the model, an editor
    recipe (templates and C computed once by the driver), the cases, the run's options and
    its batched method if any, the kernel choice and the intra-op thread count (CPU
    reductions, e.g. in the v* loop's backward pass, round by it)."""

    model: str
    dtype: torch.dtype
    seed: int
    make_editor: Callable[[LoadedModel], Editor]
    cases: Sequence[EvalCase]
    cfg: RunConfig
    onednn: bool
    threads: int
    batched: BatchRuns | None


class _RowRunner(Runner):
    """A runner that writes nothing: the driver writes the run folder and flags the rows."""

    def _write_config(self) -> None:
        pass

    def _reference(self) -> dict[str, Any]:
        return {}


class EvalWorker(RunnerStream):
    """One model and one editor on one device (a Ray actor); the driver asks it for rows."""

    def __init__(self, spec: WorkerSpec) -> None:
        from rome_fast.model.loader import load_model

        pin_onednn(spec.onednn)
        torch.set_num_threads(spec.threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        loaded = load_model(spec.model, dtype=spec.dtype, device=device, seed=spec.seed)
        self.runner = _RowRunner(
            loaded,
            spec.make_editor(loaded),
            spec.cases,
            spec.cfg,
            Path(tempfile.gettempdir()),
            fresh_editor=lambda: spec.make_editor(loaded),
            progress=False,
        )
        self.device = str(loaded.device)
        self.batched = spec.batched

    def describe(self) -> dict[str, Any]:
        return {"device": self.device, "pid": os.getpid()}

    def single_rows(self, index: int, variants: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Case ``index`` for each of ``variants`` (one preparation serves them all)."""
        rows = {v: self.runner.single_row(v, index) for v in variants}
        self.runner.forget_case(index)
        return rows

    def begin_stream(self, variant: str, weights: Mapping[str, torch.Tensor]) -> None:
        self.runner.renew_editor()
        self.runner.begin_stream(variant, weights)

    def stream_row(self, variant: str, index: int) -> dict[str, Any]:
        return self.runner.stream_row(variant, index)

    def _batches(self) -> InProcess:
        """The batched method's work on this model, written by the runner's editor now."""
        if self.batched is None:
            raise TypeError("this worker's run has no batched method")
        return InProcess(self.batched, self.runner, our_editor(self.runner))

    def single_batch(self, batch: int) -> list[dict[str, Any]]:
        return self._batches().single_batch(batch)

    def replay(self, logged: Sequence[Applied]) -> None:
        self._batches().replay(logged)

    def stream_batch(self, batch: int) -> tuple[list[dict[str, Any]], EditOutcome | None]:
        return self._batches().stream_batch(batch)


# ---------------------------------------------------------------- the driver


class Pool:
    """``size`` actor slots; a dead actor's slot gets a new actor."""

    def __init__(self, ray: ModuleType, spec: WorkerSpec, size: int) -> None:
        self.ray = ray
        self._start = actor_factory(ray, EvalWorker, "rome-eval")
        self._spec = ray.put(spec)
        self._lock = threading.Lock()
        self.actors: list[Any] = []
        self._described: list[Any] = []  # every actor's device, asked for at its start
        for _ in range(size):
            self.actors.append(self._new_actor())
        self.retried = 0

    def _new_actor(self) -> Any:
        actor = self._start(self._spec)
        self._described.append(actor.describe.remote())
        return actor

    def replace(self, slot: int, actor: Any, lost_cases: int) -> Any:
        """A new actor in ``slot`` unless another thread replaced ``actor`` already."""
        with self._lock:
            self.retried += lost_cases
            if self.actors[slot] is actor:
                self.actors[slot] = self._new_actor()
            return self.actors[slot]

    def devices(self) -> list[str]:
        """The device of every actor that loaded its model (replacements included)."""
        devices = []
        for ref in self._described:
            try:
                devices.append(fetch(self.ray, ref)["device"])
            except WorkerLost:
                continue  # killed before it had loaded the model
        return devices

    def shutdown(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)


class ShardedSingle:
    """Single-edit rows computed by the pool, two units in flight per actor, handed to the
    runner's loop in whatever order it asks for them (case order)."""

    IN_FLIGHT = 2  # per actor: the next unit is queued while the driver writes

    def __init__(
        self,
        pool: Pool,
        todo: Mapping[int, Sequence[str]],
        bar: tqdm[NoReturn],
        what: str = "case index",
    ) -> None:
        self.pool, self.bar = pool, bar
        self.dispatch = Dispatch(todo, self.IN_FLIGHT, what)
        self.results: dict[tuple[str, int], Any] = {}  # (variant, unit index) -> its rows

    def single_row(self, variant: str, index: int) -> dict[str, Any]:
        row: dict[str, Any] = self._result(variant, index)
        return row

    def _result(self, variant: str, index: int) -> Any:
        while (variant, index) not in self.results:
            self.dispatch.want(variant, index)
            self.dispatch.submit(self.pool.actors, self._start)
            self._collect()
        return self.results.pop((variant, index))

    def _start(self, actor: Any, unit: Unit) -> Any:
        return actor.single_rows.remote(unit.index, unit.variants)

    def _arrived(self, unit: Unit, answer: Any) -> None:
        """Keep what ``unit``'s actor answered (here: its row per variant) until asked for."""
        for variant, row in answer.items():
            self.results[(variant, unit.index)] = row
        self.bar.update(len(answer))

    def _cases(self, _unit: Unit) -> int:
        """The cases a unit holds (counted as retried when its actor dies): one."""
        return 1

    def _collect(self) -> None:
        (ref,), _ = self.pool.ray.wait(list(self.dispatch.in_flight), num_returns=1)
        flight = self.dispatch.landed(ref)
        try:
            answer = fetch(self.pool.ray, ref)
        except WorkerLost:
            lost = self.dispatch.lost(flight)
            self.pool.replace(flight.slot, flight.actor, sum(map(self._cases, lost)))
            self.bar.set_postfix(retried=self.pool.retried)
            return
        self._arrived(flight.unit, answer)


class ShardedBatches(ShardedSingle):
    """A batched method's single-mode batches (``todo``, each the cases of its ``spans``
    entry) computed by the pool as ``ShardedSingle``'s cases are, one unit per batch, handed
    to ``BatchRuns.run_single`` in whatever order it asks for them (batch order)."""

    def __init__(
        self,
        pool: Pool,
        variant: str,
        todo: Sequence[int],
        spans: Sequence[range],
        bar: tqdm[NoReturn],
    ) -> None:
        super().__init__(pool, {batch: [variant] for batch in todo}, bar, what="batch")
        self.variant, self.spans = variant, spans

    def single_batch(self, batch: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._result(self.variant, batch)
        return rows

    def _start(self, actor: Any, unit: Unit) -> Any:
        return actor.single_batch.remote(unit.index)

    def _arrived(self, unit: Unit, answer: Any) -> None:
        """Keep a batch's rows until asked for."""
        self.results[(self.variant, unit.index)] = answer
        self.bar.update(len(answer))

    def _cases(self, unit: Unit) -> int:
        return len(self.spans[unit.index])


class RemoteStream:
    """One sequential stream's work, done by one actor."""

    def __init__(self, pool: Pool, actor: Any, bar: tqdm[NoReturn]) -> None:
        self.pool, self.actor, self.bar = pool, actor, bar

    def _call(self, name: str, *args: Any) -> Any:
        return fetch(self.pool.ray, getattr(self.actor, name).remote(*args))

    def begin_stream(self, variant: str, weights: Mapping[str, torch.Tensor]) -> None:
        self._call("begin_stream", variant, weights)

    def stream_row(self, variant: str, index: int) -> dict[str, Any]:
        row: dict[str, Any] = self._call("stream_row", variant, index)
        self.bar.update(1)
        return row

    def edited_weights(self) -> dict[str, torch.Tensor]:
        weights: dict[str, torch.Tensor] = self._call("edited_weights")
        return weights

    def glue_scores(self) -> dict[str, Any]:
        scores: dict[str, Any] = self._call("glue_scores")
        return scores

    def final_row(self, index: int) -> dict[str, Any]:
        row: dict[str, Any] = self._call("final_row", index)
        return row

    def end_stream(self) -> None:
        self._call("end_stream")


class RemoteBatchStream(RemoteStream):
    """A batched method's sequential stream, done by one actor; the driver logs its batches."""

    def replay(self, logged: Sequence[Applied]) -> None:
        self._call("replay", logged)

    def stream_batch(self, batch: int) -> tuple[list[dict[str, Any]], EditOutcome | None]:
        rows, result = self._call("stream_batch", batch)
        self.bar.update(len(rows))
        return rows, result


def _run_stream(
    runner: Runner,
    pool: Pool,
    slots: Queue[int],
    variant: str,
    bar: tqdm[NoReturn],
    batched: BatchRuns | None,
) -> None:
    """The sequential stream of ``variant`` (of ``batched`` if given) on a free actor; after
    its death, again on a new actor from the last checkpoint (the rows written after it are
    redone)."""
    path = runner.out / f"sequential-{variant}.jsonl"
    in_flight = 1 if batched is None else batched.size  # the cases a lost edit held
    slot = slots.get()
    try:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            actor = pool.actors[slot]
            try:
                if batched is None:
                    runner.run_sequential(variant, RemoteStream(pool, actor, bar))
                else:
                    batched.run_sequential(runner, RemoteBatchStream(pool, actor, bar))
                return
            except WorkerLost:
                if attempt == MAX_ATTEMPTS:
                    raise RuntimeError(
                        f"sequential {variant}: its worker died {attempt} times; "
                        "see the Ray logs (out of memory?)"
                    ) from None
                dropped = len(read_lines(path)) - _checkpointed(runner, variant)
                bar.update(-dropped)  # counted once more when redone
                pool.replace(slot, actor, dropped + in_flight)
                bar.set_postfix(retried=pool.retried)
    finally:
        slots.put(slot)


def _checkpointed(runner: Runner, variant: str) -> int:
    state = runner.out / f"sequential-{variant}.state.pt"
    if not state.exists():
        return 0
    return int(torch.load(state, weights_only=True)["n_done"])


def _our_batches(runner: Runner) -> BatchRuns | None:
    """The runner's batched method, if any: ours only (an editor under test is built in this
    process, and a worker would write its batches with our editor instead)."""
    batched = runner.batched
    if batched is None:
        return None
    if not isinstance(batched, BatchRuns) or batched.external is not None:
        raise TypeError(
            "only our batched editors run on Ray workers; run an editor under test's batches "
            "in one process"
        )
    return batched


def _single_todo(runner: Runner) -> dict[int, list[str]]:
    """Per case index, the variants whose single-edit file does not hold it yet."""
    done = {v: len(read_lines(runner.out / f"single-{v}.jsonl")) for v in runner.cfg.variants}
    return {i: [v for v in runner.cfg.variants if i >= done[v]] for i in range(len(runner.cases))}


def _edits_done(runner: Runner) -> int:
    return sum(
        len(read_lines(runner.out / f"{mode}-{v}.jsonl"))
        for mode in runner.cfg.modes
        for v in runner.cfg.variants
    )


def run_on_cluster(
    runner: Runner,
    make_editor: Callable[[LoadedModel], Editor],
    cluster: Cluster,
    *,
    model: str,
    dtype: torch.dtype,
    seed: int,
) -> dict[str, Any]:
    """Run every mode and variant of ``runner``'s config on Ray actors, each loading
    ``load_model(model, dtype=dtype, seed=seed)`` as this process did and editing it with
    ``make_editor(loaded)``; ``summary.json`` as :meth:`Runner.run` writes it, its
    ``execution`` saying how the run was spread."""
    cfg = runner.cfg
    batched = _our_batches(runner)
    spec = WorkerSpec(
        model,
        dtype,
        seed,
        make_editor,
        runner.cases,
        cfg,
        onednn_is_faster(),
        torch.get_num_threads(),
        batched,
    )
    start = time.perf_counter()
    with runner.session(), connected(cluster) as ray:
        size = worker_count(ray, cluster)
        pool = Pool(ray, spec, size)
        total = len(runner.cases) * len(cfg.variants) * len(cfg.modes)
        bar = tqdm(total=total, initial=_edits_done(runner), desc="edits", unit="edit")
        try:
            if "single" in cfg.modes and batched is not None:
                left, spans = batched.single_batches_left(runner), batched.spans(runner)
                batches = ShardedBatches(pool, batched.variant, left, spans, bar)
                batched.run_single(runner, batches)
            elif "single" in cfg.modes:
                work = ShardedSingle(pool, _single_todo(runner), bar)
                for variant in cfg.variants:
                    runner.run_single(variant, work)
            if "sequential" in cfg.modes:
                slots: Queue[int] = Queue()
                for slot in range(size):
                    slots.put(slot)
                with ThreadPoolExecutor(max_workers=size) as threads:
                    variants = cfg.variants if batched is None else (batched.variant,)
                    streams = [
                        threads.submit(_run_stream, runner, pool, slots, v, bar, batched)
                        for v in variants
                    ]
                    for stream in streams:
                        stream.result()
            devices = pool.devices()
        finally:
            bar.close()
            pool.shutdown()
        execution = {
            "workers": size,
            "devices": devices,
            "ray_address": cluster.address or "local",
            "retried_cases": pool.retried,
            "wall_seconds": time.perf_counter() - start,
            **kernel_settings(),  # the driver's, which the workers follow
        }
    return runner.write_summary(execution)
