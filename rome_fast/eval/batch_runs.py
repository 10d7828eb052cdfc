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

Each row's ``diagnostics`` is its fact's record (``FactRecord``) with the batch's |Δ| (the
largest edited layer's, as a single edit's) and ``batch``: the batch's own record (method,
keys, per-layer |Δ| and conditioning, seconds) with its index and size.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rome_fast.edit.batch_result import BatchResult
from rome_fast.edit.editor import Editor
from rome_fast.edit.log import write_log
from rome_fast.eval.case_scoring import metrics_of
from rome_fast.eval.files import append_line
from rome_fast.eval.resume import resume_rows
from rome_fast.eval.runner import Runner, case_row
from rome_fast.hparams.batched import MethodHParams
from rome_fast.infra.timer import PhaseTimer


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


@dataclass(frozen=True)
class BatchRuns:
    """A batched method's runs of a ``Runner`` (its ``batched`` hook): ``method`` with
    ``hparams``, ``size`` facts per batch."""

    method: str
    hparams: MethodHParams
    size: int

    def __call__(self, runner: Runner, mode: str) -> None:
        if mode == "single":
            self.run_single(runner)
        else:
            self.run_sequential(runner)

    def _editor(self, runner: Runner) -> Editor:
        if not isinstance(runner.editor, Editor):
            raise TypeError(f"batched runs edit with our Editor, not {type(runner.editor)}")
        return runner.editor

    def _batch_rows(
        self, runner: Runner, mode: str, batch: int, span: range
    ) -> tuple[list[dict[str, Any]], BatchResult | None]:
        """The rows of batch ``batch``: each fact scored on the model as it is, the batch
        written, each fact scored and generated from after it. The model is left edited."""
        if runner.on_case is not None:
            runner.on_case(mode, self.method, span.start)
        rows = [case_row(runner.cases[i], i, self.method) for i in span]
        timers = [PhaseTimer() for _ in span]
        self._score_before(runner, rows, timers)
        result, error, seconds = self._write(runner, span)
        record = result.as_record() if result is not None else None
        for fact, (row, timer) in enumerate(zip(rows, timers, strict=True)):
            row["batch"] = batch
            if error is not None:
                row["error"] = error
            row["diagnostics"] = None if record is None else fact_diagnostics(record, fact, batch)
            timer.timings["edit"] = seconds / len(span)  # the batch's time, shared by its facts
            runner.score_after(row, runner.cases[row["index"]], timer)
        return rows, result

    @staticmethod
    def _score_before(runner: Runner, rows: list[dict[str, Any]], timers: list[PhaseTimer]) -> None:
        """Each row's scores on the model as it is, before its batch."""
        for row, timer in zip(rows, timers, strict=True):
            with timer.phase("score_pre"):
                row["pre"] = runner.scores(runner.cases[row["index"]])
            row["metrics_pre"] = metrics_of(row["pre"])

    def _write(self, runner: Runner, span: range) -> tuple[BatchResult | None, str | None, float]:
        """The batch written (or the error that refused it, the model unchanged) and the
        seconds it took."""
        start = time.perf_counter()
        try:
            result = self._editor(runner).edit_batch(
                [runner.cases[i].request() for i in span], self.method, method_hparams=self.hparams
            )
        except ValueError as err:  # a refused batch leaves the model as it was
            return None, f"{type(err).__name__}: {err}", time.perf_counter() - start
        for module_name in result.module_names:
            runner.snapshots.require(module_name)
        return result, None, time.perf_counter() - start

    def _append(
        self, runner: Runner, path: Path, rows: list[dict[str, Any]], history: list[float]
    ) -> None:
        """Flag each row by the collapse rule (the batch's |Δ| counted once), then write it."""
        for row in rows:
            runner.flag(row, history, remember=False)
        history.extend(batch_deltas(rows))
        for row in rows:
            append_line(path, row)

    def run_single(self, runner: Runner) -> list[dict[str, Any]]:
        """Each batch on the unedited model, restored bit-exactly after its facts are scored."""
        path = runner.out / f"single-{self.method}.jsonl"
        spans = batch_spans(len(runner.cases), self.size)
        done = finished_facts(len(resume_rows(path, runner.cases)), spans)
        rows = resume_rows(path, runner.cases, keep=done)
        history = batch_deltas(rows)
        for batch, span in enumerate(spans):
            if span.stop <= done:
                continue
            runner.snapshots.check_restored(f"single {self.method}: before batch {batch}")
            batch_rows, _ = self._batch_rows(runner, "single", batch, span)
            self._editor(runner).restore()
            runner.snapshots.check_restored(f"single {self.method}: after batch {batch}")
            self._append(runner, path, batch_rows, history)
            rows += batch_rows
        return rows

    def run_sequential(self, runner: Runner) -> list[dict[str, Any]]:
        """Batches accumulate on one model; returns the rows (each fact right after its
        batch); the final scores of every case are written as for ROME."""
        path = runner.out / f"sequential-{self.method}.jsonl"
        state_path = runner.out / f"sequential-{self.method}.state.pt"
        logs = runner.out / f"sequential-{self.method}.batches"
        spans = batch_spans(len(runner.cases), self.size)
        runner.snapshots.check_restored(f"sequential {self.method}: before the first batch")
        done = self._resume(runner, state_path, logs, spans)
        rows = resume_rows(path, runner.cases, keep=done)
        glue_done = runner.glue_on_file(self.method, done)
        every = runner.cfg.glue_every
        n_batches = sum(span.stop <= done for span in spans)
        if every and (n_batches % every == 0 or done == len(runner.cases)):
            runner.glue_at(runner, self.method, done, glue_done)
        history = batch_deltas(rows)
        for batch, span in enumerate(spans[n_batches:], start=n_batches):
            batch_rows, result = self._batch_rows(runner, "sequential", batch, span)
            cumulative = runner.snapshots.distance()
            for row in batch_rows:  # normalized like |Δ|, by the elements of one weight
                row.update(
                    cumulative_norm=cumulative, cumulative_delta=cumulative / runner.snapshots.numel
                )
            self._append(runner, path, batch_rows, history)
            rows += batch_rows
            if result is not None:
                self._log_batch(runner, logs, batch, result)
            runner._checkpoint(state_path, span.stop, runner.snapshots.current())
            if every and ((batch + 1) % every == 0 or span.stop == len(runner.cases)):
                runner.glue_at(runner, self.method, span.stop, glue_done)
        runner.final_scores(self.method, runner)
        runner.end_stream()
        return rows

    def _log_batch(self, runner: Runner, logs: Path, batch: int, result: BatchResult) -> None:
        """The batch's edit log, complete under its name or absent (renamed when written)."""
        editor = self._editor(runner)
        folder = logs / f"batch-{batch:05d}"
        partial = logs / f"batch-{batch:05d}.tmp"
        shutil.rmtree(partial, ignore_errors=True)
        write_log(
            partial, [result], model=editor.loaded.name, seed=editor.seed, hparams=editor.hparams
        )
        partial.rename(folder)

    def _resume(self, runner: Runner, state_path: Path, logs: Path, spans: list[range]) -> int:
        """Replay the batches the checkpoint holds (their logs; later ones are deleted) and
        return the facts done; a replay that misses the checkpoint's weights is refused."""
        if not state_path.exists():
            shutil.rmtree(logs, ignore_errors=True)
            return 0
        state = torch.load(state_path, weights_only=True)
        done = int(state["n_done"])
        kept = {f"batch-{b:05d}" for b, span in enumerate(spans) if span.stop <= done}
        for folder in sorted(logs.iterdir()) if logs.exists() else ():
            if folder.name in kept:
                self._editor(runner).replay_log(folder)
            else:  # written after the checkpoint (or half-written): the batch is redone
                shutil.rmtree(folder)
        replayed = runner.snapshots.current()
        saved = state["weights"]
        if set(replayed) != set(saved) or any(
            not torch.equal(replayed[name], saved[name]) for name in saved
        ):
            raise ValueError(
                f"replaying the batches logged in {logs} does not give the weights of "
                f"{state_path}; the folder is damaged (no record was changed) — use a new --out"
            )
        return done
