"""Single and sequential CounterFact runs: per-case JSON lines, resumable, with collapse flags.

Run folder layout (``out``)::

    config.json                    every option, seeds, model, library versions
    reference.json                 generation entropy of the unedited model (collapse threshold)
    single-<variant>.jsonl         one line per case: pre/post scores, metrics, diagnostics
    sequential-<variant>.jsonl     the same, plus |Δ|, cumulative ‖W−W0‖, entropy, collapse
    sequential-<variant>.state.pt  edited weights after the last finished case (resume point)
    sequential-<variant>-final.jsonl  every case scored again after the last edit
    glue-<variant>.jsonl           downstream checks before the first edit and every K edits
    sequential-<method>.batches/   a batched method's stream: one edit log per batch
                                   (``rome_fast.eval.batch_runs``; <method> is the variant)
    summary.json                   per mode and variant: ES … S, collapses, failures
    .lock                          the writing process (``rome_fast.eval.lock``)

Resuming: lines are appended and flushed one case at a time; a sequential run also
checkpoints the edited weights (atomically, after the line). On restart, anything past
the last checkpoint (or a half-written line) is dropped and recomputed, so no case is
lost or duplicated; a GLUE check missing at the checkpoint's step is redone. JSON files
are replaced atomically. A folder that cannot be resumed is refused before any file is
changed, among them one whose records exist without their config.json (never adopted).
``tests/test_faults.py`` kills a run at every write and checks all of this.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from rome_fast.eval.case_scoring import generation_check, generation_prompts, metrics_of, score_case
from rome_fast.eval.collapse import collapse_reasons, entropy_threshold
from rome_fast.eval.config import RunConfig
from rome_fast.eval.data import EvalCase
from rome_fast.eval.degraded import DegradedEditor
from rome_fast.eval.files import (
    append_line,
    read_json_object,
    read_lines,
    rewrite_lines,
    write_json,
)
from rome_fast.eval.glue import evaluate_glue
from rome_fast.eval.lock import run_folder_lock
from rome_fast.eval.protocols import AnyEditor, EditOutcome, SingleWork, Stream, StreamWork
from rome_fast.eval.reproducibility import kernel_settings
from rome_fast.eval.resume import resume_rows
from rome_fast.eval.snapshots import WeightSnapshots, editable_module_names
from rome_fast.eval.summary import summarize
from rome_fast.infra.timer import PhaseTimer
from rome_fast.model.loader import LoadedModel

T = TypeVar("T")
# What a run writes besides its identity (config.json) and its lock.
RECORD_PATTERNS = ("single-*", "sequential-*", "glue-*", "reference.json", "summary.json")


def case_row(case: EvalCase, index: int, variant: str) -> dict[str, Any]:
    """The fields that name a row's case and variant."""
    return {
        "case_id": case.case_id,
        "index": index,
        "variant": variant,
        "subject": case.subject,
        "target_new": case.target_new,
        "target_true": case.target_true,
    }


def refuse_records_without_identity(out: Path) -> None:
    """A ValueError if ``out`` holds run records but no config.json: the options they were
    computed with are unknown, so a run must not adopt them under its own."""
    records = sorted({p.name for pattern in RECORD_PATTERNS for p in out.glob(pattern)})
    if records:
        raise ValueError(
            f"{out} holds run records ({', '.join(records)}) but no config.json, so the options "
            "they were computed with are unknown and they cannot be resumed; choose a new --out, "
            "or delete the folder to start over"
        )


@dataclass
class Runner:
    """Runs ``cases`` through ``editor`` on ``loaded`` into the folder ``out``."""

    loaded: LoadedModel
    editor: AnyEditor
    cases: Sequence[EvalCase]
    cfg: RunConfig
    out: Path
    snapshots: WeightSnapshots = field(init=False)
    reference: dict[str, Any] = field(init=False)
    on_case: Callable[[str, str, int], None] | None = None  # test hook: (mode, variant, index)
    # A new editor for every mode and variant: a resumed sequential run loads weights the
    # editor never saw, so its record of W0 must not outlive that run.
    fresh_editor: Callable[[], AnyEditor] | None = None
    progress: bool = True  # per-variant bars; a distributed driver shows one bar instead
    # A batched method's run of one mode (``rome_fast.eval.batch_runs``), instead of variants.
    batched: Callable[[Runner, str], object] | None = None
    # Single-edit mode: per case index, what every variant shares (see _edit_and_score).
    _pre_scores: dict[int, dict[str, Any]] = field(init=False, default_factory=dict)
    _prepared: dict[int, Any] = field(init=False, default_factory=dict)  # the editor's own type

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.editor = self._wrap(self.editor)
        layers = None if self.cfg.method_hparams is None else self.cfg.method_hparams["layers"]
        self.snapshots = WeightSnapshots(
            self.model, editable_module_names(self.loaded, self.editor, layers)
        )

    def _wrap(self, editor: AnyEditor) -> AnyEditor:
        if self.cfg.degrade == "none":
            return editor
        return DegradedEditor(editor, self.cfg.degrade, self.model)

    @property
    def model(self) -> nn.Module:
        model = self.loaded.model
        assert isinstance(model, nn.Module)
        return model

    def _write_config(self) -> None:
        import transformers

        path = self.out / "config.json"
        # Through JSON once, so that tuples compare equal to the lists read back.
        config = json.loads(
            json.dumps({"run": self.cfg.comparable(), "cases": [c.case_id for c in self.cases]})
        )
        if path.exists():
            previous = read_json_object(path, "run configuration")
            if previous.get("cases") != config["cases"]:
                raise ValueError(
                    f"{path} records a different slice of cases; resume with the same "
                    "--data/--offset/--limit or choose a new --out"
                )
            before = previous.get("run", {})
            differ = sorted(
                k for k in set(before) | set(config["run"]) if before.get(k) != config["run"].get(k)
            )
            if differ:
                raise ValueError(
                    f"{path} records a different run (differs in "
                    + ", ".join(
                        f"{k}: {before.get(k)!r} there, {config['run'].get(k)!r} now"
                        for k in differ
                    )
                    + "); resume with the same options or choose a new --out"
                )
            return
        refuse_records_without_identity(self.out)
        config["versions"] = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        }
        config["model_name"] = getattr(self.loaded, "name", self.cfg.model)
        config["edited_modules"] = sorted(self.snapshots.original)
        write_json(path, config)

    def _reference(self) -> dict[str, Any]:
        """Generation entropy of the unedited model on the first cases' prompts."""
        path = self.out / "reference.json"
        if path.exists():
            return read_json_object(path, "reference generation check")
        self.snapshots.check_restored("before the run")
        prompts = [p for c in self.cases[:4] for p in generation_prompts(c, self.cfg.n_generations)]
        check = generation_check(
            self.model, self.loaded.tokenizer, prompts, self.cfg, self.cfg.seed
        )
        write_json(path, check)
        return check

    def _case_seed(self, index: int) -> int:
        return self.cfg.seed * 1_000_003 + index

    def _edit_and_score(
        self, case: EvalCase, index: int, variant: str, single: bool = False
    ) -> tuple[dict[str, Any], EditOutcome | None]:
        """Pre-scores, the edit, post-scores and the generation check of one case.

        In single-edit mode the model is the unedited one for every variant, so the pre-edit
        scores and the variant-independent part of the edit (keys, v*) are computed once per
        case and reused by the other variants.
        """
        timer = PhaseTimer()
        row = case_row(case, index, variant)
        with timer.phase("score_pre"):
            if single:
                row["pre"] = self._once(self._pre_scores, index, variant, lambda: self.scores(case))
            else:
                row["pre"] = self.scores(case)
        row["metrics_pre"] = metrics_of(row["pre"])
        result = None
        with timer.phase("edit"):
            try:
                result = self._edit(case, index, variant, single)
            except ValueError as err:  # a refused edit leaves the model as it was
                row["error"] = f"{type(err).__name__}: {err}"
        row["diagnostics"] = result.as_record() if result is not None else None
        for module_name in result.module_names if result is not None else ():
            self.snapshots.require(module_name)
        self.score_after(row, case, timer)
        return row, result

    def scores(self, case: EvalCase) -> dict[str, Any]:
        """``case``'s prompts scored on the model as it is now."""
        return score_case(self.model, self.loaded.tokenizer, case, self.cfg.batch_size)

    def score_after(self, row: dict[str, Any], case: EvalCase, timer: PhaseTimer) -> None:
        """``row``'s scores and generation check on the edited model, and its timings."""
        with timer.phase("score_post"):
            row["post"] = self.scores(case)
        row["metrics_post"] = metrics_of(row["post"])
        with timer.phase("generate"):
            row["generation"] = generation_check(
                self.model,
                self.loaded.tokenizer,
                generation_prompts(case, self.cfg.n_generations),
                self.cfg,
                self._case_seed(row["index"]),
            )
        row["timings"] = timer.timings

    def _edit(self, case: EvalCase, index: int, variant: str, single: bool) -> EditOutcome:
        if single:
            prepared = self._once(
                self._prepared, index, variant, lambda: self.editor.prepare(case.request())
            )
            result: EditOutcome = self.editor.apply(prepared, variant)
        else:
            result = self.editor.edit(case.request(), variant=variant)
        return result

    def _once(self, cache: dict[int, T], index: int, variant: str, compute: Callable[[], T]) -> T:
        """A single-mode cache entry: computed by the first variant, reused by the others,
        dropped by the last so that a whole run's keys and v* are not kept."""
        value = cache[index] if index in cache else compute()
        if variant == self.cfg.variants[-1]:
            cache.pop(index, None)
        else:
            cache[index] = value
        return value

    def flag(self, row: dict[str, Any], history: list[float], remember: bool = True) -> None:
        """The collapse rule on ``row`` against the |Δ| ``history``, to which its |Δ| is added
        unless ``remember`` is False (the facts of one batch share one |Δ|, counted once)."""
        delta = row["diagnostics"]["delta_norm"] if row["diagnostics"] else None
        reasons = collapse_reasons(
            delta,
            history,
            row["generation"]["ngram_entropy"],
            entropy_threshold(self.reference, self.cfg),
            self.cfg,
        )
        row["collapse"] = bool(reasons)
        row["collapse_reasons"] = reasons
        if delta is not None and remember:
            history.append(float(delta))
        if reasons:
            tqdm.write(
                f"collapse at case {row['case_id']} ({row['variant']}): {'; '.join(reasons)}"
            )

    def _bar(self, start: int, desc: str) -> Iterable[int]:
        return tqdm(
            range(start, len(self.cases)),
            desc=desc,
            initial=start,
            total=len(self.cases),
            disable=not self.progress,
        )

    def _todo(self, mode: str, variant: str, start: int) -> Iterator[int]:
        """The indices of the cases left from ``start``, under the progress bar; the test hook
        ``on_case`` sees each before its row is computed."""
        for index in self._bar(start, f"{mode} {variant}"):
            if self.on_case is not None:
                self.on_case(mode, variant, index)
            yield index

    def single_row(self, variant: str, index: int) -> dict[str, Any]:
        """One case edited on the unedited model, restored bit-exactly afterwards (unflagged)."""
        row, _ = self._edit_and_score(self.cases[index], index, variant, single=True)
        self.editor.restore()
        self.snapshots.check_restored(f"single {variant}: after case {self.cases[index].case_id}")
        return row

    def forget_case(self, index: int) -> None:
        """Drop what the variants of case ``index`` shared (a worker ran only some of them)."""
        self._pre_scores.pop(index, None)
        self._prepared.pop(index, None)

    def run_single(self, variant: str, work: SingleWork | None = None) -> list[dict[str, Any]]:
        """Each case edited on the unedited model; ``work`` computes the rows (default: here)."""
        work = work if work is not None else self
        path = self.out / f"single-{variant}.jsonl"
        rows = resume_rows(path, self.cases)
        history = [r["diagnostics"]["delta_norm"] for r in rows if r["diagnostics"]]
        self.snapshots.check_restored(f"single {variant}: before case {len(rows)}")
        for index in self._todo("single", variant, len(rows)):
            row = work.single_row(variant, index)
            self.flag(row, history)
            append_line(path, row)
            rows.append(row)
        return rows

    def glue_scores(self) -> dict[str, Any]:
        return evaluate_glue(
            self.model,
            self.loaded.tokenizer,
            data_dir=self.cfg.glue_data,
            n=self.cfg.glue_n,
            shots=self.cfg.glue_shots,
            seed=self.cfg.seed,
            batch_size=self.cfg.batch_size,
        )

    def glue_at(self, work: Stream, variant: str, step: int, done: set[int]) -> None:
        if self.cfg.glue_every == 0 or step in done:
            return
        append_line(self.out / f"glue-{variant}.jsonl", {"step": step, "tasks": work.glue_scores()})
        done.add(step)

    def glue_on_file(self, variant: str, n_done: int) -> set[int]:
        """The steps whose GLUE checks are on file, the file cut to its complete lines so
        that the next check is not appended to a torn one. A check after the checkpoint
        (written, then killed before the next checkpoint) is dropped: it is redone."""
        path = self.out / f"glue-{variant}.jsonl"
        rows = [r for r in read_lines(path) if int(r["step"]) <= n_done]
        if path.exists():
            rewrite_lines(path, rows)
        return {int(r["step"]) for r in rows}

    def _checkpoint(self, path: Path, n_done: int, weights: Mapping[str, torch.Tensor]) -> None:
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"n_done": n_done, "weights": dict(weights)}, tmp)
        tmp.replace(path)

    def begin_stream(self, variant: str, weights: Mapping[str, torch.Tensor]) -> None:
        """Start a sequential stream from the unedited model plus ``weights`` (a checkpoint)."""
        self.snapshots.check_restored(f"sequential {variant}: before the first edit")
        self.snapshots.load(weights)

    def stream_row(self, variant: str, index: int) -> dict[str, Any]:
        """The next edit of a sequential stream, on the model as the previous ones left it."""
        row, _ = self._edit_and_score(self.cases[index], index, variant)
        row["cumulative_norm"] = self.snapshots.distance()
        # Normalized like |Δ|, by the elements of one edited weight.
        row["cumulative_delta"] = row["cumulative_norm"] / self.snapshots.numel
        return row

    def edited_weights(self) -> dict[str, torch.Tensor]:
        return self.snapshots.current()

    def end_stream(self) -> None:
        self.editor.restore()
        self.snapshots.reset()  # a resumed run loaded weights the editor never saw

    def run_sequential(
        self, variant: str, work: StreamWork | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Edits accumulate; returns the per-edit rows and the final scores of every case."""
        work = work if work is not None else self
        path = self.out / f"sequential-{variant}.jsonl"
        state_path = self.out / f"sequential-{variant}.state.pt"
        n_done, weights = 0, {}
        if state_path.exists():
            state = torch.load(state_path, weights_only=True)
            n_done, weights = int(state["n_done"]), state["weights"]
        work.begin_stream(variant, weights)
        rows = resume_rows(path, self.cases, keep=n_done)
        glue_done = self.glue_on_file(variant, n_done)
        every = self.cfg.glue_every
        if every and (n_done % every == 0 or n_done == len(self.cases)):
            self.glue_at(work, variant, n_done, glue_done)
        history = [r["diagnostics"]["delta_norm"] for r in rows if r["diagnostics"]]
        for index in self._todo("sequential", variant, n_done):
            row = work.stream_row(variant, index)
            self.flag(row, history)
            append_line(path, row)
            rows.append(row)
            if (index + 1) % self.cfg.checkpoint_every == 0 or index + 1 == len(self.cases):
                self._checkpoint(state_path, index + 1, work.edited_weights())
            if every and ((index + 1) % every == 0 or index + 1 == len(self.cases)):
                self.glue_at(work, variant, index + 1, glue_done)
        final = self.final_scores(variant, work)
        work.end_stream()
        return rows, final

    def final_row(self, index: int) -> dict[str, Any]:
        """Case ``index`` scored on the model as the whole stream left it."""
        case = self.cases[index]
        scores = self.scores(case)
        return {
            "case_id": case.case_id,
            "index": index,
            "post": scores,
            "metrics_post": metrics_of(scores),
        }

    def final_scores(self, variant: str, work: Stream) -> list[dict[str, Any]]:
        path = self.out / f"sequential-{variant}-final.jsonl"
        rows = resume_rows(path, self.cases)
        for index in self._bar(len(rows), f"final {variant}"):
            row = work.final_row(index)
            append_line(path, row)
            rows.append(row)
        return rows

    def renew_editor(self) -> None:
        """A new editor for the next mode and variant (see ``fresh_editor``)."""
        if self.fresh_editor is not None:
            self.editor = self._wrap(self.fresh_editor())

    @contextmanager
    def session(self) -> Iterator[None]:
        """What every way of running the cases needs first: the folder locked against a
        second writer throughout, the config written (a resume checked against it) and the
        unedited model's reference scores."""
        with run_folder_lock(self.out):
            self._write_config()
            self.reference = self._reference()
            yield

    def run(self) -> dict[str, Any]:
        """Every mode and variant of the config, then ``summary.json``."""
        with self.session():
            return self._run_locked()

    def _run_locked(self) -> dict[str, Any]:
        start = time.perf_counter()
        for mode in self.cfg.modes:
            for variant in self.cfg.variants:
                self.renew_editor()
                if self.batched is not None:
                    self.batched(self, mode)
                elif mode == "single":
                    self.run_single(variant)
                else:
                    self.run_sequential(variant)
        device = str(getattr(self.loaded, "device", "cpu"))
        return self.write_summary(
            {
                "workers": 1,
                "devices": [device],
                "wall_seconds": time.perf_counter() - start,
                **kernel_settings(),
            }
        )

    def write_summary(self, execution: Mapping[str, Any]) -> dict[str, Any]:
        """``summary.json`` from the case files, with how this invocation ran (workers,
        devices, wall time, retries), so that scaling can be read off runs."""
        summary = summarize(
            self.out,
            self.cfg,
            getattr(self.loaded, "name", self.cfg.model),
            [c.case_id for c in self.cases],
        )
        summary["execution"] = dict(execution)
        write_json(self.out / "summary.json", summary)
        return summary


class RunnerStream:
    """The ``Stream`` calls a stream's model-side work passes to ``self.runner`` as it is
    (its edited weights, GLUE scores, final rows, the end): shared by a Ray worker and a
    batched method's work in one process."""

    runner: Runner

    def edited_weights(self) -> dict[str, torch.Tensor]:
        return self.runner.edited_weights()

    def glue_scores(self) -> dict[str, Any]:
        return self.runner.glue_scores()

    def final_row(self, index: int) -> dict[str, Any]:
        return self.runner.final_row(index)

    def end_stream(self) -> None:
        self.runner.end_stream()
