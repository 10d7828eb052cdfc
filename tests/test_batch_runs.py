"""Runs of a batched method (``rome_fast.eval.batch_runs``) on tiny GPT-2 with the fixture
facts, 2-fact batches and 3 target steps: what each row scores is checked against the batches
written again by a second editor on a second copy of the model (restored between batches, or
not), a killed stream resumes to the records of an uninterrupted one, and a Ray worker's
side of the same runs (``distributed.EvalWorker``, made here without Ray) computes the rows
of the run in one process."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from rome_fast.cli.eval import EditorRecipe, config_from_args
from rome_fast.cli.main import build_parser
from rome_fast.edit.batch_result import BatchResult
from rome_fast.edit.editor import Editor
from rome_fast.edit.log import read_replayable
from rome_fast.edit.request import EditRequest
from rome_fast.eval import batch_runs, files
from rome_fast.eval.batch_runs import BatchRuns, batch_spans, finished_facts
from rome_fast.eval.case_scoring import score_case
from rome_fast.eval.config import RunConfig
from rome_fast.eval.data import EvalCase, load_cases
from rome_fast.eval.distributed import EvalWorker, WorkerSpec, run_on_cluster
from rome_fast.eval.files import read_lines
from rome_fast.eval.reproducibility import without_timings
from rome_fast.eval.runner import Runner
from rome_fast.hparams.batched import MethodHParams
from rome_fast.hparams.defaults import hparams_for
from rome_fast.infra.cluster import Cluster
from rome_fast.methods.alphaedit.update import AlphaEditHParams
from rome_fast.methods.memit.update import MemitHParams
from rome_fast.model import linear
from rome_fast.model.linear import onednn_is_faster
from rome_fast.model.loader import LoadedModel
from tests.batch_editing import low_rank_spd
from tests.faults import Killed, first_difference, records
from tests.models import TEMPLATES, changed_parameters, fresh_model, tiny_hparams, weights_of

DATA = "counterfact/counterfact-rome-schema-sample.json"
FAMILY = "tiny-gpt2"
N_CASES, SIZE = 4, 2
MEMIT = MemitHParams(layers=(0, 1), mom2_update_weight=1.0)
METHODS: dict[str, MethodHParams] = {
    "memit": MEMIT,
    "alphaedit": AlphaEditHParams(layers=(0, 1)),
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()  # tiny models only lose from intra-op threads
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cases() -> list[EvalCase]:
    return load_cases(DATA, limit=N_CASES)


def new_editor(loaded: LoadedModel, cls: type[Editor] = Editor) -> Editor:
    return cls(loaded, hparams=tiny_hparams(FAMILY), templates=TEMPLATES, stats=low_rank_spd)


def config(method: str, mode: str) -> RunConfig:
    return RunConfig(
        model=f"random:{FAMILY}",
        data=DATA,
        variants=(method,),
        modes=(mode,),
        n_generations=1,
        generation_tokens=4,
        method=method,
        facts_per_batch=SIZE,
        method_hparams=dataclasses.asdict(METHODS[method]),
        # The |Δ| rule with a factor far below 1 flags every batch once the history holds
        # one batch: which rows are flagged shows how the history counts batches. No
        # generation entropy is below -1: the entropy rule never fires.
        collapse_min_history=1,
        collapse_factor=1e-3,
        collapse_entropy=-1.0,
        glue_every=1,  # after every batch
        glue_n=2,
        glue_shots=0,
    )


def batch_runner(out: Path, method: str, mode: str, cls: type[Editor] = Editor) -> Runner:
    loaded = fresh_model(FAMILY)
    editor = new_editor(loaded, cls)
    runs = BatchRuns(method, METHODS[method], SIZE)
    recipe = EditorRecipe.of(editor, runs.hparams.layers)
    return Runner(
        loaded,
        editor,
        cases(),
        config(method, mode),
        out,
        fresh_editor=lambda: recipe(loaded),
        progress=False,
        batched=runs,
    )


Scores = dict[str, Any]


def written_again(method: str, restore_between: bool) -> list[tuple[Scores, Scores]]:
    """Per fact, (scores before its batch, scores after it), from the batches written by
    another editor on another copy of the model."""
    loaded = fresh_model(FAMILY)
    editor = new_editor(loaded)
    scored: list[tuple[Scores, Scores]] = []
    for span in batch_spans(N_CASES, SIZE):
        facts = [cases()[i] for i in span]
        before = [score_case(loaded.model, loaded.tokenizer, case, 16) for case in facts]
        editor.edit_batch([c.request() for c in facts], method, method_hparams=METHODS[method])
        after = [score_case(loaded.model, loaded.tokenizer, case, 16) for case in facts]
        scored += list(zip(before, after, strict=True))
        if restore_between:
            editor.restore()
    return scored


@pytest.fixture(scope="module")
def sequential_memit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sequential-memit")
    batch_runner(out, "memit", "sequential").run()
    return out


def test_batch_spans_cover_the_cases_in_order() -> None:
    assert batch_spans(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert [finished_facts(n, batch_spans(5, 2)) for n in range(6)] == [0, 0, 2, 2, 4, 5]


@pytest.fixture(scope="module")
def single_memit(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """A single-mode run, done."""
    runner = batch_runner(tmp_path_factory.mktemp("single-memit"), "memit", "single")
    runner.run()
    return runner


def test_single_batches_are_each_scored_after_them_on_the_unedited_model(
    single_memit: Runner,
) -> None:
    unedited = weights_of(fresh_model(FAMILY))
    assert changed_parameters(single_memit.loaded, unedited) == []
    rows = read_lines(single_memit.out / "single-memit.jsonl")
    expected = written_again("memit", restore_between=True)
    assert [(r["pre"], r["post"]) for r in rows] == expected
    assert [r["batch"] for r in rows] == [0, 0, 1, 1]
    assert all(r["diagnostics"]["batch"]["size"] == SIZE for r in rows)


def test_sequential_batches_accumulate_each_scored_after_it(sequential_memit: Path) -> None:
    rows = read_lines(sequential_memit / "sequential-memit.jsonl")
    expected = written_again("memit", restore_between=False)
    # Batch 1's facts are scored before it on the model batch 0 left, and after it.
    assert [(r["pre"], r["post"]) for r in rows] == expected
    final = read_lines(sequential_memit / "sequential-memit-final.jsonl")
    assert [r["post"] for r in final[SIZE:]] == [after for _, after in expected[SIZE:]]


def test_the_collapse_rule_counts_each_batch_once(sequential_memit: Path) -> None:
    rows = read_lines(sequential_memit / "sequential-memit.jsonl")
    assert [r["collapse"] for r in rows] == [False, False, True, True]
    cumulative = [r["cumulative_norm"] for r in rows]
    assert cumulative[0] == cumulative[1] < cumulative[2] == cumulative[3]


def test_the_glue_checks_come_before_the_first_batch_and_after_each(
    sequential_memit: Path,
) -> None:
    steps = [r["step"] for r in read_lines(sequential_memit / "glue-memit.jsonl")]
    assert steps == [0, SIZE, 2 * SIZE]  # counted in facts


def test_the_summary_holds_each_batch(sequential_memit: Path) -> None:
    rows = read_lines(sequential_memit / "sequential-memit.jsonl")
    summary = json.loads((sequential_memit / "summary.json").read_text())
    batches = summary["results"]["sequential"]["memit"]["batches"]
    assert [b["facts"] for b in batches] == [SIZE, SIZE]
    assert [b["cumulative_norm"] for b in batches] == [
        rows[1]["cumulative_norm"],
        rows[3]["cumulative_norm"],
    ]
    assert [[s["layer"] for s in b["sites"]] for b in batches] == [[0, 1], [0, 1]]


def worker(runner: Runner, monkeypatch: pytest.MonkeyPatch) -> EvalWorker:
    """What a Ray actor of ``runner``'s memit run holds (``distributed.EvalWorker``), made
    here: the model loaded as the actor loads it, editors of the driver's recipe. An actor pins
    its process's oneDNN choice; this process gets its own back after the test."""
    monkeypatch.setattr(linear, "_pinned", linear._pinned)
    make_editor = EditorRecipe.of(new_editor(fresh_model(FAMILY)), MEMIT.layers)
    threads, onednn = torch.get_num_threads(), onednn_is_faster()
    runs = BatchRuns("memit", MEMIT, SIZE)
    spec = WorkerSpec(
        runner.cfg.model,
        torch.float32,
        0,
        make_editor,
        runner.cases,
        runner.cfg,
        onednn,
        threads,
        runs,
    )
    return EvalWorker(spec)


def as_computed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as a worker returns them: unflagged (the driver flags them), without times."""
    flags = ("collapse", "collapse_reasons")
    return [{k: v for k, v in without_timings(r).items() if k not in flags} for r in rows]


def test_a_worker_writes_each_batch_on_its_unedited_model_in_any_order(
    single_memit: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch 1 first, then batch 0 (as after a requeue): the rows of the run in one process."""
    rows = read_lines(single_memit.out / "single-memit.jsonl")
    on_worker = worker(single_memit, monkeypatch)
    second, first = on_worker.single_batch(1), on_worker.single_batch(0)
    assert as_computed(first + second) == as_computed(rows)


def test_a_worker_resumes_a_stream_from_the_batches_the_driver_read(
    sequential_memit: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch 0 replayed from its log, read here and handed over as the driver sends it; then
    batch 1: its rows and the weights after it are those of the stream in one process."""
    runner = batch_runner(sequential_memit, "memit", "sequential")
    on_worker = worker(runner, monkeypatch)
    on_worker.begin_stream("memit", {})
    log = sequential_memit / "sequential-memit.batches" / "batch-00000"
    on_worker.replay(read_replayable(log, runner.model, runner.loaded.name))
    rows, result = on_worker.stream_batch(1)
    assert as_computed(rows) == as_computed(
        read_lines(sequential_memit / "sequential-memit.jsonl")[SIZE:]
    )
    assert isinstance(result, BatchResult)
    state = torch.load(sequential_memit / "sequential-memit.state.pt", weights_only=True)
    weights = on_worker.edited_weights()
    assert weights.keys() == state["weights"].keys()
    assert all(torch.equal(weights[name], state["weights"][name]) for name in weights)


def test_the_batches_left_to_shard_are_those_not_all_on_file(
    single_memit: Runner, tmp_path: Path
) -> None:
    """What a resumed single-mode run gives its workers: batch 1 of a run killed after one of
    its facts, and none of a finished run."""
    rows = read_lines(single_memit.out / "single-memit.jsonl")
    killed = batch_runner(tmp_path, "memit", "single")
    files.rewrite_lines(killed.out / "single-memit.jsonl", rows[: SIZE + 1])
    runs = BatchRuns("memit", MEMIT, SIZE)
    assert runs.single_batches_left(killed) == [1]
    assert runs.single_batches_left(single_memit) == []


def test_an_editor_under_tests_batches_are_refused_on_workers(tmp_path: Path) -> None:
    """A worker would write them with our editor: refused before Ray or the folder is used."""
    runner = batch_runner(tmp_path, "memit", "single")
    ours = runner.batched
    assert isinstance(ours, BatchRuns)
    runner.batched = dataclasses.replace(ours, external=lambda: new_editor(runner.loaded))
    recipe = EditorRecipe.of(new_editor(runner.loaded), MEMIT.layers)
    with pytest.raises(TypeError, match="editor under test"):
        run_on_cluster(
            runner, recipe, Cluster(workers=2), model=FAMILY, dtype=torch.float32, seed=0
        )
    assert list(tmp_path.iterdir()) == []


def killer(monkeypatch: pytest.MonkeyPatch, kind: str, at: int) -> None:
    """Kill the run at its ``at``-th write of ``kind``: a fact's line (left half-written), or
    the checkpoint (after the batch's rows and log, before its state is saved)."""
    seen = {"row": 0, "checkpoint": 0}
    append_line, checkpoint = files.append_line, Runner._checkpoint

    def count(what: str) -> None:
        seen[what] += 1
        if (what, seen[what]) == (kind, at):
            raise Killed(f"at {what} write {at}")

    def torn_append(path: Path, row: dict[str, Any]) -> None:
        if (kind, seen["row"] + 1) == ("row", at):
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row)[:40])
        count("row")
        append_line(path, row)

    def killed_checkpoint(self: Runner, path: Path, n_done: int, weights: Any) -> None:
        count("checkpoint")
        checkpoint(self, path, n_done, weights)

    monkeypatch.setattr(batch_runs, "append_line", torn_append)
    monkeypatch.setattr(Runner, "_checkpoint", killed_checkpoint)


@pytest.mark.parametrize(
    ("method", "kind", "at"),
    [
        ("memit", "row", SIZE + 1),  # batch 1's first line half-written
        ("memit", "checkpoint", 2),  # batch 1 scored and logged, its state not saved
        ("alphaedit", "checkpoint", 2),  # AlphaEdit's memory of batch 0 rebuilt by replay
    ],
)
def test_a_stream_killed_in_its_second_batch_resumes_to_the_same_records(
    method: str, kind: str, at: int, tmp_path: Path, sequential_memit: Path
) -> None:
    """The resumed run replays batch 0 from its log and redoes batch 1 whole."""
    killed = tmp_path / "killed"
    with pytest.MonkeyPatch.context() as patch:
        killer(patch, kind, at)
        with pytest.raises(Killed):
            batch_runner(killed, method, "sequential").run()
    batch_runner(killed, method, "sequential").run()
    whole = sequential_memit
    if method != "memit":
        whole = tmp_path / "whole"
        batch_runner(whole, method, "sequential").run()
    assert first_difference(records(whole), records(killed)) is None
    logs = sorted(p.name for p in (killed / f"sequential-{method}.batches").iterdir())
    assert logs == ["batch-00000", "batch-00001"]


def identity(size: str, method_hparams: MethodHParams) -> dict[str, Any]:
    argv = ["eval", "--model", f"random:{FAMILY}", "--method", "memit", "--batch-size", size]
    args = build_parser().parse_args([*argv, "--out", "unused"])
    return config_from_args(args, "m", hparams_for(FAMILY), method_hparams).comparable()


def test_the_batch_size_and_the_method_hparams_are_part_of_the_run_identity() -> None:
    base = identity("2", METHODS["memit"])
    heavier = dataclasses.replace(MEMIT, mom2_update_weight=2.0)
    for other, field in (
        (identity("3", METHODS["memit"]), "facts_per_batch"),
        (identity("2", heavier), "method_hparams"),
    ):
        assert {k for k in base if base[k] != other[k]} == {field}
    assert (base["method"], base["variants"]) == ("memit", ("memit",))


class RefusingEditor(Editor):
    """Refuses the second batch (the one holding case ``SIZE``), as a singular batch is."""

    def edit_batch(
        self, requests: Sequence[EditRequest], method: str = "memit", **options: Any
    ) -> BatchResult:
        if cases()[SIZE].case_id in [r.case_id for r in requests]:
            raise ValueError("refused for the test")
        return super().edit_batch(requests, method, **options)


def test_a_refused_batch_fails_its_facts_and_leaves_the_stream_as_it_was(tmp_path: Path) -> None:
    batch_runner(tmp_path, "memit", "sequential", RefusingEditor).run()
    rows = read_lines(tmp_path / "sequential-memit.jsonl")
    refused = rows[SIZE:]
    assert all("refused for the test" in r["error"] and r["diagnostics"] is None for r in refused)
    assert [r["pre"] for r in refused] == [r["post"] for r in refused]  # nothing was written
    summary = json.loads((tmp_path / "summary.json").read_text())["results"]["sequential"]
    assert summary["memit"]["failed"] == SIZE
    assert [b["failed"] for b in summary["memit"]["batches"]] == [False, True]
    assert sorted(p.name for p in (tmp_path / "sequential-memit.batches").iterdir()) == [
        "batch-00000"
    ]
