"""Batched editors under the harness (``rome_fast.conform.batch_run``): correct editors pass at
the floor, each planted bug fails the property that targets it, editor failures are verdicts
(exit 1, valid JSON), misuse exits 2. Table: docs/results/batched-conformance.md."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest

from rome_fast.cli.main import main
from rome_fast.conform.batch_properties import PRESERVES
from rome_fast.conform.batch_protocol import (
    BatchInputs,
    CallableBatchEditor,
    OurBatchEditor,
    shaped_like_public,
)
from rome_fast.conform.batch_run import BatchReport
from rome_fast.edit.request import EditRequest
from rome_fast.hparams.batched import MethodHParams
from rome_fast.methods.alphaedit.update import AlphaEditHParams
from rome_fast.methods.emmet.update import EmmetHParams
from tests.anchors import checkout
from tests.batch_conform_editors import (
    PLANTED,
    ForgetsKp,
    KpByFact,
    KpByFactPastFirst,
    LeakyKp,
    PartialKp,
    PlainMemit,
    plain_memit,
)
from tests.batch_conform_setup import (
    LAYERS,
    THREE_BATCHES,
    TWO_BATCHES,
    conform_batches,
    failed,
)
from tests.test_conform_cli import run_pytest_entry

FAST = ["--model", "random:tiny-gpt2", "--steps", "3", "--stats-samples", "8"]
ALPHAEDIT = AlphaEditHParams(layers=LAYERS, nullspace_threshold=0.5)


@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("make", [OurBatchEditor, plain_memit], ids=["ours", "plain"])
def test_correct_memit_editors_pass_at_the_public_keys(family: str, make: type) -> None:
    report = conform_batches(make(), family, expect="memit")
    assert report.ok, str(report)
    assert report.verdict == "memit"
    assert failed(report) == set()


@pytest.mark.parametrize(
    "method",
    [
        EmmetHParams(layers=LAYERS, mom2_update_weight=1e4),
        ALPHAEDIT,
    ],
    ids=["emmet", "alphaedit"],
)
def test_ours_passes_each_method_and_is_named_by_its_key_choice(method: MethodHParams) -> None:
    """Two batches in sequence: AlphaEdit's second checked with the first's keys as Kₚ."""
    report = conform_batches(OurBatchEditor("k_prompt"), method=method)
    assert report.ok, str(report)
    assert report.verdict == "k_prompt"
    assert report.method in report.description


def test_alphaedit_that_forgets_earlier_batches_fails_the_second_batch() -> None:
    """The second batch is written over the first and checked against the reference with the
    first batch's keys as Kₚ (ours, one editor for the batches applied, passes there: the test
    above). One that solves every batch as a first edit fails the second batch only (tiny
    GPT-2: 4.7e4× the floor on matches_reference; tiny Llama 18.7×,
    docs/results/batched-conformance.md)."""
    forgets = conform_batches(ForgetsKp("k_prompt"), method=ALPHAEDIT, expect="k_prompt")
    first, second = ({m.name: m.passed for m in c.properties} for c in forgets.cases)
    assert False not in first.values(), str(forgets)
    assert second["matches_reference"] is False, str(forgets)
    assert failed(forgets) == {"matches_reference", PRESERVES, "residual_k_prompt"}, str(forgets)


def test_alphaedit_that_keeps_half_of_the_earlier_keys_fails_at_them() -> None:
    """Every other key of the first batch in the second's Kₚ, on tiny Llama, where the keys
    weigh little against α (‖P Kₚ‖²/α ≈ 8e-4) and lie away from the batch's own (cosine ≤ 0.26
    after the projection): ΔW moves mostly along the earlier keys, so ``matches_reference``
    reads 15× its floor and ``preserves_earlier``, at those keys, 94×
    (docs/results/batched-conformance.md); ours 0.73×."""
    report = conform_batches(
        PartialKp("k_prompt", part="half"), "tiny-llama", method=ALPHAEDIT, expect="k_prompt"
    )
    first, second = ({m.name: m for m in c.properties}[PRESERVES] for c in report.cases)
    assert first.passed is None, str(report)  # a first edit: no Kₚ to measure at
    assert second.passed is False, str(report)
    assert second.value > 10 * second.bound, str(report)


@pytest.mark.parametrize(
    ("make", "only"),
    [(LeakyKp, False), (lambda: KpByFact("k_prompt"), True)],
    ids=["leaky-kp", "kp-by-fact"],
)
def test_an_undone_batch_that_leaves_a_trace_fails_no_trace(make: type, only: bool) -> None:
    """Kₚ kept in a module-level cache past a revert. ``leaky-kp`` (every batch ever written:
    what EasyEdit's ``cache_c`` does) also fails determinism and the sequence; ``kp-by-fact``
    (a fact written again replaces its own entry) writes the batch twice alike and checks the
    sequence right, and only ``no_trace`` sees the second batch's keys in the first's Kₚ."""
    report = conform_batches(make(), method=ALPHAEDIT)
    assert "no_trace" in failed(report), str(report)
    if only:
        assert failed(report) == {"no_trace"}, str(report)
    assert report.properties()["no_trace"]["value"] > 0
    json.dumps(report.to_json(), allow_nan=False)


def test_a_trace_that_bends_only_later_batches_fails_no_trace_from_the_second_on() -> None:
    """``kp-by-fact-past-first`` (the fact cache read only over another batch) in a sequence of
    three: the first batch written again after the run is clean, so a ``no_trace`` of the first
    batch alone passes it; the sequence written again finds the third batch's keys in the
    second's Kₚ (and the third then stands on another second batch)."""
    report = conform_batches(KpByFactPastFirst("k_prompt"), method=ALPHAEDIT, batches=THREE_BATCHES)
    traces = [{m.name: m for m in c.properties}["no_trace"] for c in report.cases]
    assert [t.passed for t in traces] == [True, False, False], str(report)
    assert failed(report) == {"no_trace"}, str(report)


def test_a_key_choice_other_than_expected_fails_its_residual() -> None:
    report = conform_batches(OurBatchEditor("k_star"), expect="memit")
    assert not report.ok
    assert report.verdict == "k_star"
    assert {"residual_memit", "matches_reference"} <= failed(report)


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_each_planted_bug_fails_the_property_that_targets_it(name: str) -> None:
    make, caught = PLANTED[name]
    report = conform_batches(make(), expect="memit")
    assert not report.ok
    assert caught in failed(report), str(report)
    json.dumps(report.to_json(), allow_nan=False)


def test_stale_weights_need_a_sequence_to_be_seen() -> None:
    """Each batch from the original weights, the stale W0 is the right one: caught only when
    the second batch is written over the first."""
    apart = conform_batches(PLANTED["stale-w0"][0](), expect="memit", sequential=False)
    assert apart.ok, str(apart)
    # no_trace: every batch written again alone on the original weights, each as it was first
    traces = [{m.name: m for m in c.properties}["no_trace"] for c in apart.cases]
    assert [(t.passed, t.value) for t in traces] == [(True, 0.0)] * len(TWO_BATCHES)


@pytest.mark.parametrize(
    ("editor", "caught"),
    [
        ("raises_midway", "edit_completed"),
        ("training_mode", "model_state"),
        ("touches_embedding", "only_edited_layers"),
    ],
)
def test_editor_failures_are_verdicts(editor: str, caught: str) -> None:
    import tests.batch_conform_editors as editors

    report = conform_batches(CallableBatchEditor(getattr(editors, editor), editor))
    assert caught in failed(report), str(report)
    json.dumps(report.to_json(), allow_nan=False)


def test_a_revert_that_fails_while_a_sequence_unwinds_fails_its_batch() -> None:
    """The kept batches are reverted in reverse order at the end: an editor that can undo
    only its latest batch fails on the first one (its revert raised), never passes unchecked."""
    from tests.batch_conform_editors import OneDeepRevert

    report = conform_batches(OneDeepRevert(), expect="memit")
    assert not report.ok
    assert "edit_completed" in {m.name for m in report.cases[0].properties if not m.passed}
    second = {m.name: m.passed for m in report.cases[1].properties}
    assert second["edit_completed"], str(report)
    assert second["revert_exact"], str(report)
    assert "nothing to revert" in json.dumps(report.to_json(), allow_nan=False)


def test_an_editor_that_fails_when_written_again_fails_no_trace_and_ends_the_replay() -> None:
    """Two batches kept in sequence take six writes (each batch, reversed, again); the seventh,
    the first batch written again after the run, raises: its ``no_trace`` fails naming the
    error, the second is not measured (it would stand on other weights), the model leaves as
    it came (``conform_batches`` checks)."""
    writes = itertools.count(1)

    def fails_from_the_seventh(inputs: BatchInputs) -> None:
        if next(writes) >= 7:
            raise RuntimeError("planted failure on the seventh write")
        PlainMemit().edit(inputs)

    report = conform_batches(CallableBatchEditor(fails_from_the_seventh, "seventh"))
    first, second = ({m.name: m for m in c.properties}["no_trace"] for c in report.cases)
    assert first.passed is False, str(report)
    assert "planted failure on the seventh write" in first.detail
    assert second.passed is None, str(report)
    assert "earlier batch failed when written again" in second.detail
    assert failed(report) == {"no_trace"}, str(report)


def test_a_hung_editor_is_a_failed_property_and_ends_the_run() -> None:
    import tests.batch_conform_editors as editors

    report = conform_batches(CallableBatchEditor(editors.hangs, "hangs"), timeout=0.5)
    assert failed(report) == {"edit_completed"}, str(report)
    assert len(report.cases) == 1
    assert "did not return within 0.5 s" in report.settings["stopped"]
    json.dumps(report.to_json(), allow_nan=False)


@dataclasses.dataclass(frozen=True)
class DriverInputs:
    """Another code's inputs with ``BatchInputs``' fields, as ``MemitInputs``."""

    loaded: object
    requests: object
    templates: object
    C: object
    hparams: object
    method: object
    seed: int


@dataclasses.dataclass
class Driver:
    """A public-code driver's shape (``PublicMemit``): name, uncontrolled, edit, revert."""

    name: str = "driver"
    uncontrolled: list[str] = dataclasses.field(default_factory=list)
    seen: list[DriverInputs] = dataclasses.field(default_factory=list)

    def edit(self, inputs: DriverInputs) -> None:
        self.seen.append(inputs)
        fields = {f.name: getattr(inputs, f.name) for f in dataclasses.fields(inputs)}
        PlainMemit().edit(BatchInputs(**fields))

    def revert(self) -> None:
        raise NotImplementedError("this driver keeps no copy")


def test_a_driver_shaped_like_public_memit_plugs_in_through_one_adapter() -> None:
    driver = Driver()
    report = conform_batches(shaped_like_public(driver, DriverInputs), expect="memit")
    assert all(isinstance(seen, DriverInputs) for seen in driver.seen)
    assert driver.seen
    assert failed(report) == {"edit_completed"}, str(report)
    assert (
        "driver's revert raised NotImplementedError"
        in report.properties()["edit_completed"]["detail"]
    )


def test_a_driver_with_other_inputs_is_refused_naming_the_fields() -> None:
    @dataclasses.dataclass
    class Other:
        loaded: object

    with pytest.raises(TypeError, match="any other field with a default"):
        shaped_like_public(Driver(), Other)


def test_a_driver_may_take_more_inputs_with_defaults_but_not_required_ones() -> None:
    fields = [(f.name, f.type) for f in dataclasses.fields(DriverInputs)]
    more = dataclasses.make_dataclass("More", [*fields, ("projector", object, None)])
    required = dataclasses.make_dataclass("Required", [*fields, ("projector", object)])
    assert shaped_like_public(Driver(), more).name == "driver"
    with pytest.raises(TypeError, match=r"'projector'.*any other field with a default"):
        shaped_like_public(Driver(), required)


@pytest.mark.anchors
@pytest.mark.parametrize(("editor", "folder"), [("memit", "memit"), ("easyedit-emmet", "easyedit")])
def test_the_public_codes_pass_at_their_own_keys(tmp_path: Path, editor: str, folder: str) -> None:
    out = tmp_path / "public.json"
    path = str(checkout(folder))
    argv = ["conform", "--editor", editor, "--editor-path", path, "--batch", "2"]
    code = main([*argv, "--cases", "1", "--expect", "memit", "--json", str(out), *FAST])
    report = json.loads(out.read_text())
    assert code == 0, report
    assert report["verdict"] == "memit"


@pytest.mark.anchors
def test_the_original_memit_code_unwinds_a_sequence_of_batches() -> None:
    """Two batches kept in a row, then reverted in reverse order: the driver keeps the
    weights each edit returned, so both reverts are checked exact (it kept only the latest)."""
    from rome_fast.cli.conform_batch import batch_editor_from_spec

    editor = batch_editor_from_spec("memit", checkout("memit"), "memit", None)
    report = conform_batches(editor, expect="memit")
    assert report.ok, str(report)
    assert all({m.name: m.passed for m in case.properties}["revert_exact"] for case in report.cases)


@pytest.mark.parametrize(
    ("editor", "method", "caught"),
    [
        ("scaled", None, "matches_reference"),  # the default method: MEMIT
        ("leaky", "alphaedit", "no_trace"),  # a module-level key cache kept past a revert
    ],
)
def test_cli_exit_1_on_a_planted_bug_with_valid_json(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    editor: str,
    method: str | None,
    caught: str,
) -> None:
    out = tmp_path / "batch.json"
    spec = f"tests.batch_conform_editors:{editor}"
    chosen = [] if method is None else ["--method", method]
    argv = ["conform", "--editor", spec, *chosen, "--batch", "2", "--cases", "1"]
    code = main([*argv, "--json", str(out), *FAST])
    printed = capsys.readouterr().out
    assert code == 1, printed
    assert f"{caught:<19} FAILED" in printed
    report = json.loads(out.read_text(), parse_constant=pytest.fail)
    assert report["properties"][caught]["passed"] is False
    assert report["cases"][0]["properties"][caught]["value"] > 0
    assert "--batch 2" in report["reproducer"]
    assert ("--method" in report["reproducer"]) == (method is not None)


def test_pytest_entry_reports_each_batched_property() -> None:
    run = run_pytest_entry(
        {
            "ROME_CONFORM_EDITOR": "tests.batch_conform_editors:scaled",
            "ROME_CONFORM_BATCH": "2",
            "ROME_CONFORM_CASES": "1",
            "ROME_CONFORM_STEPS": "3",
            "ROME_CONFORM_EXPECT": "memit",
        },
        module="rome_fast.conform.test_batch_conformance",
    )
    assert run.returncode == 1, run.stdout + run.stderr
    entry = "rome_fast/conform/test_batch_conformance.py"
    assert f"FAILED {entry}::test_batch_property[matches_reference]" in run.stdout, run.stdout
    assert f"FAILED {entry}::test_batch_verdict" in run.stdout, run.stdout


def easyedit_alphaedit(isolate: bool, batches: list[list[EditRequest]]) -> BatchReport:
    """EasyEdit's AlphaEdit under the harness, ``batches`` kept in sequence."""
    from rome_fast.conform.easyedit_batched import EasyEditBatched, EasyEditInputs

    code = EasyEditBatched("easyedit-alphaedit", checkout("easyedit"), isolate_state=isolate)
    editor = shaped_like_public(code, EasyEditInputs)
    return conform_batches(editor, method=ALPHAEDIT, batches=batches)


@pytest.mark.anchors
def test_easyedit_alphaedit_carries_its_key_cache_in_a_sequence_and_leaves_no_trace() -> None:
    """EasyEdit's AlphaEdit under the adapter (each edit from fresh module globals, ``cache_c``
    carried from the batches applied and dropped with a reverted one): the second batch of a
    sequence is solved with the first's keys (its misfit that of the first batch, the code's
    float32 solve over the full width, docs/results/easyedit-batched.md; solved as a first
    edit it would be 4.7e4× the floor) and no trace is left."""
    report = easyedit_alphaedit(True, [batch[:2] for batch in TWO_BATCHES])
    first, second = ({m.name: m for m in c.properties}["matches_reference"] for c in report.cases)
    assert second.value < 2 * first.value, str(report)
    assert {"no_trace", "deterministic", "revert_exact"}.isdisjoint(failed(report))
    assert report.properties()["no_trace"]["passed"] is True


@pytest.mark.anchors
def test_easyedit_alphaedit_as_in_a_users_process_fails_no_trace() -> None:
    """``isolate_state=False``: the code's own ``cache_c`` keeps an undone batch's keys."""
    report = easyedit_alphaedit(False, [TWO_BATCHES[0][:2]])
    assert "no_trace" in failed(report), str(report)
    json.dumps(report.to_json(), allow_nan=False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--editor", "rome-verify", "--method", "emmet"], "add --batch N"),
        (["--editor", "rome-verify", "--expect", "k_star"], "add --batch N"),
        (["--editor", "rome-verify", "--batch", "5", "--cases", "2"], "hold 8"),
        (["--editor", "rome-verify", "--batch", "2", "--expect", "r-rome"], "key choice"),
        (["--editor", "rome-verify", "--batch", "2", "--variant", "r-rome"], "unknown key choice"),
        (["--editor", "memit", "--batch", "2", "--method", "emmet"], "runs --method memit"),
        (["--editor", "memit", "--batch", "2"], "--editor-path"),
        (["--editor", "rebuilding-rome", "--batch", "2"], "unknown --editor"),
        (["--editor", "easyedit-emmet", "--batch", "2", "--method", "memit"], "--method emmet"),
        (["--editor", "easyedit-alphaedit", "--batch", "2"], "EasyEdit's checkout"),
        (["--editor", "rome-verify", "--projector", "float64"], "add --batch N"),
        (
            ["--editor", "easyedit-emmet", "--batch", "2", "--projector", "float64"],
            "--projector applies to --editor easyedit-alphaedit",
        ),
    ],
)
def test_cli_batch_misuse_exits_2_with_one_line(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ROME_EDITOR_PATH", raising=False)
    code = main(["conform", *argv, "--model", "random:tiny-gpt2"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1, err
