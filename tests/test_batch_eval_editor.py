"""``rome eval --editor SPEC --method M``: a batched editor under test writes the batches
(``rome_fast.conform.batch_external``), scored as our batched runs are. On tiny GPT-2 with the
fixture facts, 2-fact batches and 3 target steps (``tests.test_batch_runs``' setup): ours
through the batch protocol gives our built-in run's records, every editor failure is a batch
of failed facts on the model as it was, single mode restores the weights between batches, a
sequential stream resumes from its checkpointed weights (AlphaEdit's refused), and options
that do not apply are refused before the model loads."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rome_fast.cli.eval import _external_batch_runner
from rome_fast.cli.inputs import read_inputs
from rome_fast.cli.main import build_parser, main
from rome_fast.conform.batch_external import ExternalBatchEditor
from rome_fast.conform.batch_protocol import (
    BatchEditorUnderTest,
    CallableBatchEditor,
    OurBatchEditor,
)
from rome_fast.conform.batch_run import BatchSettings
from rome_fast.eval.batch_runs import BatchesOnly, BatchRuns
from rome_fast.eval.data import load_cases
from rome_fast.eval.files import read_lines
from rome_fast.eval.runner import Runner
from rome_fast.infra.errors import RunStoppedError
from rome_fast.model import loader
from tests import batch_conform_editors, batch_eval_editors
from tests.batch_editing import low_rank_spd
from tests.faults import Killed, first_difference, records
from tests.models import TEMPLATES, changed_parameters, fresh_model, tiny_hparams, weights_of
from tests.test_batch_runs import DATA, FAMILY, METHODS, N_CASES, SIZE, batch_runner, config, killer

# |Δ| measured from the weights (‖W₁ − W₀‖ in float64 of float32 weights) against ours from the
# factors (‖L Rᵀ‖ without forming ΔW): measured at most 1.36e-9 relative on these batches
# (single mode; sequential 2.0e-10); 8× that, for another CPU's float32 kernels.
DELTA_RELATIVE = 8 * 1.36e-9

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def external_runner(
    out: Path,
    method: str,
    mode: str,
    make: Callable[[], BatchEditorUnderTest] = OurBatchEditor,
    timeout: float | None = None,
) -> Runner:
    """The batched run of ``tests.test_batch_runs.batch_runner`` with ``make()`` writing the
    batches through the batch protocol, on the same inputs (templates, C per layer, settings)."""
    loaded = fresh_model(FAMILY)
    hparams = METHODS[method]
    settings = BatchSettings(
        tiny_hparams(FAMILY),
        hparams,
        {layer: low_rank_spd(loaded, layer) for layer in hparams.layers},
        TEMPLATES,
        0,
    )
    runs = BatchRuns(
        method,
        hparams,
        SIZE,
        external=lambda: ExternalBatchEditor(make, loaded, settings, timeout),
        label=method,  # the built-in run's file names, so that whole folders compare
    )
    cases = load_cases(DATA, limit=N_CASES)
    return Runner(
        loaded, BatchesOnly(), cases, config(method, mode), out, progress=False, batched=runs
    )


def without_diagnostics(found: dict[str, Any]) -> tuple[dict[str, Any], list[float]]:
    """The records with each row's ``diagnostics`` and the summary's |Δ| fields taken out, and
    the |Δ| of every row (what an editor under test's record and ours share)."""
    deltas: list[float] = []
    for name, rows in found.items():
        if name.endswith(".jsonl"):
            for row in rows:
                diagnostics = row.pop("diagnostics", None)
                if diagnostics is not None:
                    deltas.append(diagnostics["delta_norm"])
    for variants in found["summary.json"]["results"].values():
        for summary in variants.values():
            summary.pop("delta_norm")
            for batch in summary.get("batches", []):
                batch.pop("sites", None)
    return found, deltas


@pytest.mark.parametrize(
    ("method", "mode"), [("memit", "single"), ("memit", "sequential"), ("alphaedit", "single")]
)
def test_ours_under_test_gives_our_batched_records(method: str, mode: str, tmp_path: Path) -> None:
    """The same computation through the protocol: every score, generation, collapse flag, GLUE
    check and final score bit-identical; |Δ| to the floor of measuring it from the weights.
    AlphaEdit's: its memory of earlier batches (Kₚ) as ours has it, none in single mode."""
    batch_runner(tmp_path / "ours", method, mode).run()
    external_runner(tmp_path / "under-test", method, mode).run()
    ours, our_deltas = without_diagnostics(records(tmp_path / "ours"))
    theirs, their_deltas = without_diagnostics(records(tmp_path / "under-test"))
    assert first_difference(ours, theirs) is None
    assert len(their_deltas) == N_CASES
    for a, b in zip(our_deltas, their_deltas, strict=True):
        assert abs(a - b) <= DELTA_RELATIVE * a


def test_single_mode_restores_the_weights_before_every_batch(tmp_path: Path) -> None:
    runner = external_runner(tmp_path, "memit", "single")
    unedited = weights_of(runner.loaded)
    seen: list[list[str]] = []
    runner.on_case = lambda *_: seen.append(changed_parameters(runner.loaded, unedited))
    runner.run()
    assert seen == [[], []]  # before each of the two batches
    assert changed_parameters(runner.loaded, unedited) == []
    rows = read_lines(tmp_path / "single-memit.jsonl")
    assert all("error" not in r and r["diagnostics"]["delta_norm"] > 0 for r in rows)


FAILING: dict[str, tuple[Callable[[], BatchEditorUnderTest], str]] = {
    "raises": (
        lambda: CallableBatchEditor(batch_conform_editors.raises_midway, "raises"),
        "planted failure after the first write",
    ),
    "nan": (
        lambda: CallableBatchEditor(batch_eval_editors.writes_nan, "nan"),
        "non-finite values",
    ),
    "shape": (
        lambda: CallableBatchEditor(batch_eval_editors.wrong_shape, "shape"),
        "replaced",
    ),
}


@pytest.mark.parametrize("name", FAILING)
def test_a_failing_editor_fails_its_facts_on_the_model_as_it_was(name: str, tmp_path: Path) -> None:
    make, said = FAILING[name]
    runner = external_runner(tmp_path, "memit", "sequential", make)
    unedited = weights_of(runner.loaded)
    modules = {n: runner.model.get_submodule(n).weight for n in runner.snapshots.original}
    runner.run()
    rows = read_lines(tmp_path / "sequential-memit.jsonl")
    assert all(said in r["error"] and r["diagnostics"] is None for r in rows)
    assert [r["pre"] for r in rows] == [r["post"] for r in rows]  # scored on the restored model
    assert all(runner.model.get_submodule(n).weight is w for n, w in modules.items())
    assert changed_parameters(runner.loaded, unedited) == []
    summary = json.loads((tmp_path / "summary.json").read_text())["results"]["sequential"]
    assert summary["memit"]["failed"] == N_CASES
    assert summary["memit"]["immediate"]["ES"] == 0.0  # never scored as a success


def test_a_failed_batch_leaves_the_stream_as_the_batch_before_left_it(tmp_path: Path) -> None:
    external_runner(
        tmp_path / "fails", "memit", "sequential", batch_eval_editors.FailsOnBatch
    ).run()
    rows = read_lines(tmp_path / "fails" / "sequential-memit.jsonl")
    assert [("error" in r) for r in rows] == [False] * SIZE + [True] * SIZE
    assert [r["pre"] for r in rows[SIZE:]] == [r["post"] for r in rows[SIZE:]]
    assert rows[SIZE]["cumulative_norm"] == rows[SIZE - 1]["cumulative_norm"] > 0
    summary = json.loads((tmp_path / "fails" / "summary.json").read_text())["results"]
    assert summary["sequential"]["memit"]["failed"] == SIZE
    assert [b["failed"] for b in summary["sequential"]["memit"]["batches"]] == [False, True]


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_a_refused_alphaedit_batch_ends_the_stream_of_the_editor_under_test(
    tmp_path: Path, method: str
) -> None:
    """AlphaEdit's editor under test may remember a refused batch's keys (Kₚ) and no revert
    reaches that memory: its later batches are refused unrun. MEMIT keeps nothing but the
    weights, so its stream goes on."""
    fails_first = lambda: batch_eval_editors.FailsOnBatch(fails_on=1)  # noqa: E731
    external_runner(tmp_path, method, "sequential", fails_first).run()
    rows = read_lines(tmp_path / f"sequential-{method}.jsonl")
    assert all("planted failure after batch 1" in r["error"] for r in rows[:SIZE])
    later = [r.get("error", "") for r in rows[SIZE:]]
    if method == "alphaedit":
        assert all(e.startswith("ValueError: not run: an earlier alphaedit batch") for e in later)
    else:
        assert later == [""] * SIZE


def test_a_hung_editor_fails_its_batch_and_gets_no_later_one(tmp_path: Path) -> None:
    hangs = lambda: CallableBatchEditor(batch_conform_editors.hangs, "hangs")  # noqa: E731
    runner = external_runner(tmp_path, "memit", "single", hangs, timeout=0.2)
    runner.run()
    rows = read_lines(tmp_path / "single-memit.jsonl")
    assert all("did not return within 0.2 s" in r["error"] for r in rows[:SIZE])
    assert all("not run: an earlier batch hung" in r["error"] for r in rows[SIZE:])
    summary = json.loads((tmp_path / "summary.json").read_text())["results"]["single"]
    assert summary["memit"]["failed"] == N_CASES


def test_a_write_outside_the_layers_stops_the_run(tmp_path: Path) -> None:
    touches = lambda: CallableBatchEditor(batch_conform_editors.touches_embedding, "t")  # noqa: E731
    with pytest.raises(RunStoppedError, match="outside the layers"):
        external_runner(tmp_path, "memit", "single", touches).run()
    assert read_lines(tmp_path / "single-memit.jsonl") == []  # no row of that batch


def test_a_killed_stream_resumes_from_its_checkpointed_weights(tmp_path: Path) -> None:
    """Batch 1 scored, its checkpoint not saved: the resumed run loads batch 0's weights and
    redoes batch 1, to the records of an uninterrupted run."""
    killed = tmp_path / "killed"
    with pytest.MonkeyPatch.context() as patch:
        killer(patch, "checkpoint", 2)
        with pytest.raises(Killed):
            external_runner(killed, "memit", "sequential").run()
    external_runner(killed, "memit", "sequential").run()
    whole = tmp_path / "whole"
    external_runner(whole, "memit", "sequential").run()
    assert first_difference(records(whole), records(killed)) is None
    assert not (killed / "sequential-memit.batches").exists()  # no log: the weights are the state


def test_an_alphaedit_stream_of_an_editor_under_test_is_not_resumed(tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as patch:
        killer(patch, "checkpoint", 2)
        with pytest.raises(Killed):
            external_runner(tmp_path, "alphaedit", "sequential").run()
    before = records_on_file(tmp_path)
    with pytest.raises(ValueError, match=r"cannot be resumed.*new --out"):
        external_runner(tmp_path, "alphaedit", "sequential").run()
    assert records_on_file(tmp_path) == before


def records_on_file(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


QUICK = [
    "eval",
    "--model",
    f"random:{FAMILY}",
    "--data",
    DATA,
    "--limit",
    "2",
    "--generations",
    "1",
    "--generation-tokens",
    "4",
    "--stats-samples",
    "8",
]
UNDER_TEST = ["--editor", "rome-verify", "--method", "memit", "--batch-size", "2"]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ([*UNDER_TEST, "--variants", "rome"], "--variants"),
        ([*UNDER_TEST, "--degrade", "zero"], "--degrade"),
        ([*UNDER_TEST, "--impl", "naive"], "--impl naive"),
        ([*UNDER_TEST, "--precision", "bf16"], "--precision"),
        ([*UNDER_TEST, "--workers", "2"], "--workers"),
        ([*UNDER_TEST, "--timeout", "0"], "--timeout"),
        (["--method", "memit", "--batch-size", "2", "--timeout", "5"], "--timeout"),
        (["--editor", "rome-verify", "--timeout", "-1"], "--timeout"),
        (["--timeout", "5"], "--timeout"),
        ([*UNDER_TEST, "--editor-path", "."], "--editor-path"),
        (["--editor", "memit", "--method", "emmet", "--batch-size", "2"], "--method memit"),
    ],
)
def test_options_that_do_not_apply_are_refused_before_the_model_loads(
    options: list[str],
    named: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_model(*_: object, **__: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loader, "load_model", no_model)
    out = tmp_path / "run"
    assert main([*QUICK, *options, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert named in error
    assert len(error.strip().splitlines()) == 1
    assert not out.exists()


def test_a_write_outside_the_layers_stops_the_command_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    editor = ["--editor", "tests.batch_conform_editors:touches_embedding"]
    options = [*editor, "--method", "memit", "--batch-size", "2"]
    assert main([*QUICK, *options, "--out", str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err
    assert "Traceback" not in error
    last = error.strip().splitlines()[-1]
    assert last.startswith("rome eval: stopped: ")
    assert "outside the layers" in last


def identity(*options: str) -> dict[str, Any]:
    argv = [*QUICK, *UNDER_TEST[2:], *options, "--device", "cpu", "--out", "unused"]
    args = build_parser().parse_args(argv)
    read_inputs(args)  # as run_eval does first
    runner = _external_batch_runner(args, load_cases(DATA, limit=2))
    comparable: dict[str, Any] = runner.cfg.comparable()
    return comparable


def test_the_editor_and_the_method_are_part_of_the_run_identity(tmp_path: Path) -> None:
    spec = "batch_editor:memit_through_rome_verify"
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "inputs"
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "batch_editor.py").write_text((fixtures / "batch_editor.py").read_text())
    base = identity("--editor", spec, "--editor-path", str(fixtures))
    for other, differ in (
        (identity("--editor", spec, "--editor-path", str(copy)), {"editor"}),
        (identity("--editor", "rome-verify"), {"editor", "variants"}),
        (identity("--editor", "rome-verify", "--variant", "k_star"), {"editor", "variants"}),
    ):
        assert {k for k in base if base[k] != other.get(k)} == differ
    assert base["method"] == "memit"
    assert base["variants"] == ("memit-batch_editor.memit_through_rome_verify",)
    assert base["editor"]["spec"] == spec
