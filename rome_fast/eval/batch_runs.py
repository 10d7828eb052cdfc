"""Runs of a batched method (``rome eval --method M --batch-size N``): the cases split into
batches of N in order, each written with ``Editor.edit_batch`` and each of its facts then
scored with a single edit's row fields, under the variant name M.

``single``: every batch on the unedited model, restored after its facts are scored.
``sequential``: batches accumulate; after each, its facts' rows (with ‖W − W0‖), the collapse
rule, a GLUE check every K batches (``--glue-every K``; steps counted in facts), and the
checkpoint: the batch's edit log (``sequential-M.batches/batch-00003``, written under a
temporary name, then renamed), then ``sequential-M.state.pt`` (facts done and the edited
weights: the commit point). A resumed stream replays the logged batches before the commit
point (the weights and AlphaEdit's memory of earlier keys), requires the weights to equal the
checkpoint's bit for bit, and goes on at the first unfinished batch. Rows of a batch cut
short by a kill are dropped and the batch is redone, in both modes.

The loops (``BatchRuns.run_single``, ``run_sequential``) read the folder, order, flag and
write; the model-side work goes through ``protocols.SingleBatchWork`` and
``protocols.BatchStreamWork``: :class:`InProcess` on the runner's model, or Ray workers
(``rome_fast.eval.distributed``, ours only), each holding an ``InProcess`` of its own model;
the driver reads the logs a resumed stream replays and sends them.

Each row's ``diagnostics`` is its fact's record (``FactRecord``) with the batch's |Δ| (the
largest edited layer's, as a single edit's) and ``batch``: the batch's own record (method,
keys, per-layer |Δ| and conditioning, seconds) with its index and size.

An editor under test (``BatchRuns.external``: ``rome eval --editor SPEC --method M``) writes
the batches instead of ours, a new one per mode (and in single mode per batch: the restore
brings a new one, so that AlphaEdit's memory of an undone batch goes, as ours empties its log),
scored the same way; its record is what its weights show (per-layer |Δ|). A batch it fails is
restored and its facts recorded failed. It keeps no edit log: a resumed stream loads the
checkpoint's weights (its batches depend on the weights and the harness's inputs only, as
MEMIT's and EMMET's do); AlphaEdit's memory of earlier batches is the editor's own, so such a
stream is refused when batches are left.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rome_fast.edit.batch_result import Applied, BatchResult
from rome_fast.edit.editor import Editor
from rome_fast.edit.log import read_replayable, write_log
from rome_fast.eval.case_scoring import metrics_of
from rome_fast.eval.files import append_line, read_lines
from rome_fast.eval.protocols import BatchStreamWork, BatchWriter, EditOutcome, SingleBatchWork
from rome_fast.eval.resume import resume_rows
from rome_fast.eval.runner import Runner, RunnerStream, case_row
from rome_fast.hparams.batched import MethodHParams
from rome_fast.infra.timer import PhaseTimer

EXTERNAL_ALPHAEDIT_RESUME = (
    "{state} holds a sequential alphaedit stream of an editor under test, which cannot be "
    "resumed: its memory of earlier batches (Kₚ) is the editor's own; rerun with a new --out"
)


def batch_spans(n_cases: int, size: int) -> list[range]:
    """The case indices of each batch, in order; the last may be shorter."""
    return [range(start, min(start + size, n_cases)) for start in range(0, n_cases, size)]


def finished_facts(n_rows: int, spans: Sequence[range]) -> int:
    """The facts of the batches whose every row is among the first ``n_rows``."""
    return max((span.stop for span in spans if span.stop <= n_rows), default=0)


def batch_deltas(rows: Sequence[dict[str, Any]]) -> list[float]:
    """The |Δ| of each written batch, once per batch, in order (the collapse rule's history)."""
    per_batch = {r["batch"]: r["diagnostics"]["delta_norm"] for r in rows if r["diagnostics"]}
    return [float(delta) for delta in per_batch.values()]


def fact_diagnostics(record: dict[str, Any], fact: int, batch: int) -> dict[str, Any]:
    """Row ``diagnostics`` of fact ``fact`` of a batch's ``BatchResult.as_record()``."""
    own = {key: value for key, value in record.items() if key != "facts"}
    own.update(index=batch, size=len(record["facts"]))
    delta = max(site["delta_norm"] for site in record["sites"])
    return {**record["facts"][fact], "delta_norm": delta, "batch": own}


class BatchesOnly:
    """The runner's editor when an editor under test writes the batches
    (``BatchRuns.external``): it makes no single edit."""

    def _refuse(self, *_: object, **__: object) -> Any:
        raise TypeError("this run's edits are batches, written by the editor under test")

    edit = prepare = apply = revert = _refuse

    def restore(self) -> None:
        """Nothing to restore: it wrote nothing."""


def our_editor(runner: Runner) -> Editor:
    """The runner's editor, ours: what writes, logs and replays our batches."""
    if not isinstance(runner.editor, Editor):
        raise TypeError(f"batched runs edit with our Editor, not {type(runner.editor)}")
    return runner.editor


@dataclass(frozen=True)
class BatchRuns:
    """A batched method's runs of a ``Runner`` (its ``batched`` hook): ``method`` with
    ``hparams``, ``size`` facts per batch, written by the runner's editor (ours) or by a new
    ``external()`` per mode (an editor under test), under the variant name ``label`` (default:
    the method's). The loops here order, flag and write the rows and checkpoints; the
    model-side work is :class:`InProcess`'s, or Ray workers' (``rome_fast.eval.distributed``)."""

    method: str
    hparams: MethodHParams
    size: int
    external: Callable[[], BatchWriter] | None = None
    label: str | None = None

    @property
    def variant(self) -> str:
        return self.label or self.method

    def __call__(self, runner: Runner, mode: str) -> None:
        writer = self.external() if self.external is not None else our_editor(runner)
        work = InProcess(self, runner, writer)
        if mode == "single":
            self.run_single(runner, work)
        else:
            self.run_sequential(runner, work)

    def spans(self, runner: Runner) -> list[range]:
        return batch_spans(len(runner.cases), self.size)

    def _file(self, runner: Runner, mode: str) -> Path:
        return runner.out / f"{mode}-{self.variant}.jsonl"

    def single_batches_left(self, runner: Runner) -> list[int]:
        """The batches of single mode whose rows are not all on file yet, in order."""
        spans = self.spans(runner)
        done = finished_facts(len(read_lines(self._file(runner, "single"))), spans)
        return [batch for batch, span in enumerate(spans) if span.stop > done]

    def _announce(self, runner: Runner, mode: str, span: range) -> None:
        """The test hook ``on_case`` sees each batch (by its first fact) before its rows."""
        if runner.on_case is not None:
            runner.on_case(mode, self.variant, span.start)

    def _append(
        self, runner: Runner, path: Path, rows: list[dict[str, Any]], history: list[float]
    ) -> None:
        """Flag each row by the collapse rule (the batch's |Δ| counted once), then write it."""
        for row in rows:
            runner.flag(row, history, remember=False)
        history.extend(batch_deltas(rows))
        for row in rows:
            append_line(path, row)

    def run_single(self, runner: Runner, work: SingleBatchWork) -> list[dict[str, Any]]:
        """Each batch on the unedited model (``work`` restores it after each), its rows
        written in case order."""
        path = self._file(runner, "single")
        spans = self.spans(runner)
        done = finished_facts(len(resume_rows(path, runner.cases)), spans)
        rows = resume_rows(path, runner.cases, keep=done)
        history = batch_deltas(rows)
        for batch, span in enumerate(spans):
            if span.stop <= done:
                continue
            self._announce(runner, "single", span)
            batch_rows = work.single_batch(batch)
            self._append(runner, path, batch_rows, history)
            rows += batch_rows
        return rows

    def run_sequential(self, runner: Runner, work: BatchStreamWork) -> list[dict[str, Any]]:
        """Batches accumulate on one model; returns the rows (each fact right after its
        batch); the final scores of every case are written as for ROME."""
        path = self._file(runner, "sequential")
        state_path = runner.out / f"sequential-{self.variant}.state.pt"
        logs = runner.out / f"sequential-{self.variant}.batches"
        spans = self.spans(runner)
        done = self._resume(runner, work, state_path, logs, spans)
        rows = resume_rows(path, runner.cases, keep=done)
        glue_done = runner.glue_on_file(self.variant, done)
        every = runner.cfg.glue_every
        n_batches = sum(span.stop <= done for span in spans)
        if every and (n_batches % every == 0 or done == len(runner.cases)):
            runner.glue_at(work, self.variant, done, glue_done)
        history = batch_deltas(rows)
        for batch, span in enumerate(spans[n_batches:], start=n_batches):
            self._announce(runner, "sequential", span)
            batch_rows, result = work.stream_batch(batch)
            self._append(runner, path, batch_rows, history)
            rows += batch_rows
            if isinstance(result, BatchResult):  # ours; an editor under test keeps no log
                self._log_batch(runner, logs, batch, result)
            runner._checkpoint(state_path, span.stop, work.edited_weights())
            if every and ((batch + 1) % every == 0 or span.stop == len(runner.cases)):
                runner.glue_at(work, self.variant, span.stop, glue_done)
        runner.final_scores(self.variant, work)
        work.end_stream()
        return rows

    def _log_batch(self, runner: Runner, logs: Path, batch: int, result: BatchResult) -> None:
        """The batch's edit log, complete under its name or absent (renamed when written)."""
        editor = our_editor(runner)
        folder = logs / f"batch-{batch:05d}"
        partial = logs / f"batch-{batch:05d}.tmp"
        shutil.rmtree(partial, ignore_errors=True)
        write_log(
            partial, [result], model=editor.loaded.name, seed=editor.seed, hparams=editor.hparams
        )
        partial.rename(folder)

    def _resume(
        self,
        runner: Runner,
        work: BatchStreamWork,
        state_path: Path,
        logs: Path,
        spans: list[range],
    ) -> int:
        """Start ``work``'s stream where the checkpoint left it and return the facts done: an
        editor under test's at the checkpoint's weights, ours by replaying the batches logged
        before it; a replay that misses the checkpoint's weights is refused."""
        if not state_path.exists():
            shutil.rmtree(logs, ignore_errors=True)
            work.begin_stream(self.variant, {})
            return 0
        state = torch.load(state_path, weights_only=True)
        done = int(state["n_done"])
        if self.external is not None:  # no log to replay: the weights are the stream's state
            if self.method == "alphaedit" and done < len(runner.cases):
                raise ValueError(EXTERNAL_ALPHAEDIT_RESUME.format(state=state_path))
            work.begin_stream(self.variant, state["weights"])
            return done
        work.begin_stream(self.variant, {})
        work.replay(self._logged(runner, logs, spans, done))
        replayed = work.edited_weights()
        saved = state["weights"]
        if set(replayed) != set(saved) or any(
            not torch.equal(replayed[name], saved[name]) for name in saved
        ):
            raise ValueError(
                f"replaying the batches logged in {logs} does not give the weights of "
                f"{state_path}; the folder is damaged (no record was changed) — use a new --out"
            )
        return done

    @staticmethod
    def _logged(runner: Runner, logs: Path, spans: list[range], done: int) -> list[Applied]:
        """The batches logged up to the checkpoint at ``done`` facts, in order, read here
        (checked against the runner's model); a log written after it (or half-written) is
        deleted: its batch is redone."""
        kept = {f"batch-{b:05d}" for b, span in enumerate(spans) if span.stop <= done}
        logged: list[Applied] = []
        for folder in sorted(logs.iterdir()) if logs.exists() else ():
            if folder.name in kept:
                logged += read_replayable(folder, runner.model, runner.loaded.name)
            else:
                shutil.rmtree(folder)
        return logged


@dataclass(frozen=True)
class InProcess(RunnerStream):
    """A batched method's model-side work on ``runner``'s own model, the batches written by
    ``writer`` (:class:`~rome_fast.eval.protocols.SingleBatchWork` and
    :class:`~rome_fast.eval.protocols.BatchStreamWork`); a Ray worker holds one of its own."""

    runs: BatchRuns
    runner: Runner
    writer: BatchWriter

    def single_batch(self, batch: int) -> list[dict[str, Any]]:
        """Batch ``batch`` on the unedited model, restored bit-exactly after its facts are
        scored."""
        variant, snapshots = self.runs.variant, self.runner.snapshots
        snapshots.check_restored(f"single {variant}: before batch {batch}")
        rows, _ = self._batch_rows(batch)
        self.writer.restore()
        snapshots.check_restored(f"single {variant}: after batch {batch}")
        return rows

    def begin_stream(self, variant: str, weights: Mapping[str, torch.Tensor]) -> None:
        self.runner.begin_stream(variant, weights)

    def replay(self, logged: Sequence[Applied]) -> None:
        our_editor(self.runner).replay(logged)

    def stream_batch(self, batch: int) -> tuple[list[dict[str, Any]], EditOutcome | None]:
        """The next batch of the stream on the model as the earlier ones left it, each row
        with ‖W − W0‖ after it."""
        rows, result = self._batch_rows(batch)
        snapshots = self.runner.snapshots
        cumulative = snapshots.distance()
        for row in rows:  # normalized like |Δ|, by the elements of one weight
            row.update(cumulative_norm=cumulative, cumulative_delta=cumulative / snapshots.numel)
        return rows, result

    def _batch_rows(self, batch: int) -> tuple[list[dict[str, Any]], EditOutcome | None]:
        """The rows of batch ``batch``: each fact scored on the model as it is, the batch
        written, each fact scored and generated from after it. The model is left edited."""
        runner, span = self.runner, self.runs.spans(self.runner)[batch]
        rows = [case_row(runner.cases[i], i, self.runs.variant) for i in span]
        timers = [PhaseTimer() for _ in span]
        self._score_before(rows, timers)
        result, error, seconds = self._write(span)
        record = result.as_record() if result is not None else None
        for fact, (row, timer) in enumerate(zip(rows, timers, strict=True)):
            row["batch"] = batch
            if error is not None:
                row["error"] = error
            row["diagnostics"] = None if record is None else fact_diagnostics(record, fact, batch)
            timer.timings["edit"] = seconds / len(span)  # the batch's time, shared by its facts
            runner.score_after(row, runner.cases[row["index"]], timer)
        return rows, result

    def _score_before(self, rows: list[dict[str, Any]], timers: list[PhaseTimer]) -> None:
        """Each row's scores on the model as it is, before its batch."""
        for row, timer in zip(rows, timers, strict=True):
            with timer.phase("score_pre"):
                row["pre"] = self.runner.scores(self.runner.cases[row["index"]])
            row["metrics_pre"] = metrics_of(row["pre"])

    def _write(self, span: range) -> tuple[EditOutcome | None, str | None, float]:
        """The batch written (or the error that refused it, the model unchanged) and the
        seconds it took."""
        runner, runs = self.runner, self.runs
        start = time.perf_counter()
        try:
            result = self.writer.edit_batch(
                [runner.cases[i].request() for i in span], runs.method, method_hparams=runs.hparams
            )
        except ValueError as err:  # a refused batch leaves the model as it was
            return None, f"{type(err).__name__}: {err}", time.perf_counter() - start
        for module_name in result.module_names:
            runner.snapshots.require(module_name)
        return result, None, time.perf_counter() - start
