"""``rome eval --editor SPEC --method M`` on the public batched codes (marker anchors): the
original MEMIT code and EasyEdit's MEMIT, EMMET and AlphaEdit, run through the command line on
tiny random GPT-2 (single and sequential) and GPT-J (sequential): 2 batches of 2 facts, one
generation of 4 tokens, C from 8 samples, the target optimization cut to 3 steps by an
``--hparams`` file that otherwise restates the model's defaults for the method, 2 fixed
templates. One run per configuration, shared by the tests that read it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from rome_fast.cli.main import main
from rome_fast.eval.files import read_lines
from rome_fast.eval.runner import Runner
from rome_fast.hparams.batched import method_hparams_at
from rome_fast.hparams.defaults import hparams_for
from rome_fast.model import loader
from rome_fast.model.loader import LoadedModel
from tests.anchors import checkout
from tests.faults import Killed, first_difference, records
from tests.models import changed_parameters, weights_of
from tests.test_batch_runs import DATA, killer

pytestmark = [pytest.mark.anchors, pytest.mark.usefixtures("one_torch_thread")]

EDITORS: dict[str, tuple[str, str]] = {  # --editor: (its checkout, its --method)
    "memit": ("memit", "memit"),
    "easyedit-memit": ("easyedit", "memit"),
    "easyedit-emmet": ("easyedit", "emmet"),
    "easyedit-alphaedit": ("easyedit", "alphaedit"),
}
# GPT-J in one mode: its layout is what it adds; the modes' own checks run on GPT-2. Its runs
# and the resumed streams are opt-in (`nox -s conform`), for CI's time budget: the default
# suite keeps every editor in both modes on GPT-2.
CONFIGS = [
    *((editor, "tiny-gpt2", mode) for editor in EDITORS for mode in ("single", "sequential")),
    *(
        pytest.param((editor, "tiny-gptj", "sequential"), marks=pytest.mark.conform)
        for editor in EDITORS
    ),
]
N_CASES, SIZE = 4, 2
METRICS = ("ES", "EM", "PS", "PM", "NS", "NM")
TEMPLATES = "{}\nThe city is large. {}\n"  # the MEMIT code refuses braces in a template


def method_layers(method: str, family: str) -> tuple[int, ...]:
    """The layers the model's defaults give ``method`` (what each run's file restates)."""
    model = f"random:{family}"
    return method_hparams_at(method, model, hparams_for(model).layer).layers


@dataclass
class CliRun:
    """One ``rome eval`` command's folder, and the model it loaded: as the command left it,
    and its weights as loaded and (sequential) as the stream of batches left them."""

    out: Path
    editor: str
    family: str
    mode: str
    loaded: LoadedModel
    unedited: dict[str, torch.Tensor]
    at_stream_end: dict[str, torch.Tensor] | None

    @property
    def method(self) -> str:
        return EDITORS[self.editor][1]

    @property
    def label(self) -> str:
        return f"{self.method}-{self.editor}"

    def rows(self, suffix: str = "") -> list[dict[str, Any]]:
        return read_lines(self.out / f"{self.mode}-{self.label}{suffix}.jsonl")

    def summary(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads((self.out / "summary.json").read_text())
        return dict(found["results"][self.mode][self.label])


@dataclass
class Commands:
    """The command lines of this module's runs, in ``root``."""

    root: Path

    def argv(self, editor: str, family: str, mode: str, out: Path, *more: str) -> list[str]:
        folder, method = EDITORS[editor]
        model = f"random:{family}"
        defaults = dataclasses.asdict(method_hparams_at(method, model, hparams_for(model).layer))
        hparams = self.root / f"{family}-{method}.json"
        hparams.write_text(json.dumps({**defaults, "v_num_grad_steps": 3}))
        templates = self.root / "templates.txt"
        templates.write_text(TEMPLATES)
        return [
            "eval",
            *("--model", model, "--data", DATA, "--limit", str(N_CASES), "--device", "cpu"),
            *("--generations", "1", "--generation-tokens", "4", "--stats-samples", "8"),
            *("--hparams", str(hparams), "--templates", str(templates)),
            *("--editor", editor, "--editor-path", str(checkout(folder))),
            *("--method", method, "--batch-size", str(SIZE), "--out", str(out)),
            *(["--sequential"] if mode == "sequential" else []),
            *more,
        ]

    def run(self, editor: str, family: str, mode: str, out: Path, *more: str) -> CliRun:
        """The command run in this process, the model it loads kept."""
        loaded: list[LoadedModel] = []
        unedited: list[dict[str, torch.Tensor]] = []
        at_stream_end: list[dict[str, torch.Tensor]] = []
        load, end_stream = loader.load_model, Runner.end_stream

        def kept(*args: Any, **kwargs: Any) -> LoadedModel:
            loaded.append(load(*args, **kwargs))
            unedited.append(weights_of(loaded[-1]))
            return loaded[-1]

        def noted_end(runner: Runner) -> None:  # before the stream's weights are reset
            at_stream_end.append(weights_of(runner.loaded))
            end_stream(runner)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(loader, "load_model", kept)
            patch.setattr(Runner, "end_stream", noted_end)
            code = main(self.argv(editor, family, mode, out, *more))
        assert code == 0, f"rome eval exited {code}"
        (model,), (weights,) = loaded, unedited
        return CliRun(out, editor, family, mode, model, weights, next(iter(at_stream_end), None))


@pytest.fixture(scope="module")
def commands(tmp_path_factory: pytest.TempPathFactory) -> Commands:
    return Commands(tmp_path_factory.mktemp("checkout-runs"))


@pytest.fixture(scope="module")
def shared_runs(commands: Commands) -> Iterator[Callable[[str, str, str], CliRun]]:
    """Each configuration's run, made once for the module."""
    made: dict[tuple[str, str, str], CliRun] = {}

    def run(editor: str, family: str, mode: str) -> CliRun:
        key = (editor, family, mode)
        if key not in made:
            made[key] = commands.run(*key, commands.root / "-".join(key))
        return made[key]

    yield run
    made.clear()


@pytest.fixture(params=CONFIGS, ids="-".join)
def run(request: pytest.FixtureRequest, shared_runs: Callable[[str, str, str], CliRun]) -> CliRun:
    return shared_runs(*request.param)


def test_every_batch_is_written(run: CliRun) -> None:
    assert [r.get("error") for r in run.rows()] == [None] * N_CASES
    summary = run.summary()
    assert summary["failed"] == 0
    assert [(b["batch"], b["facts"], b["failed"]) for b in summary["batches"]] == [
        (0, SIZE, False),
        (1, SIZE, False),
    ]


def test_each_fact_is_scored_after_its_batch(run: CliRun) -> None:
    rows = run.rows()
    assert [(r["index"], r["batch"]) for r in rows] == [(i, i // SIZE) for i in range(N_CASES)]
    for row in rows:
        for scores in (row["metrics_pre"], row["metrics_post"]):
            assert all(isinstance(scores[m], float) for m in METRICS), scores
        assert row["generation"]
    assert all(r["post"] != r["pre"] for r in rows)  # scored on the edited model
    if run.mode == "sequential":  # and every case again after the last batch
        assert [r["index"] for r in run.rows("-final")] == list(range(N_CASES))


def test_only_the_methods_layers_are_written(run: CliRun) -> None:
    """The records name the model's layers for the method, each changed, in every batch; a
    stream's checkpoint holds those layers' weights as the stream left them, and nothing else
    changed; the command leaves the model as it loaded it."""
    layers = method_layers(run.method, run.family)
    for row in run.rows():
        sites = row["diagnostics"]["batch"]["sites"]
        assert [s["layer"] for s in sites] == list(layers)
        assert all(s["delta_norm"] > 0 for s in sites)
    if run.mode == "sequential":
        assert run.at_stream_end is not None
        modules = [run.loaded.adapter.edited_module_name(layer) for layer in layers]
        changed = [n for n, w in run.at_stream_end.items() if not torch.equal(w, run.unedited[n])]
        assert changed == [f"{name}.weight" for name in modules]
        state = torch.load(run.out / f"sequential-{run.label}.state.pt", weights_only=True)
        assert sorted(state["weights"]) == sorted(modules)
        for name in modules:
            assert torch.equal(state["weights"][name], run.at_stream_end[f"{name}.weight"])
    assert changed_parameters(run.loaded, run.unedited) == []


def killed_after_the_first_batch(commands: Commands, editor: str, out: Path) -> None:
    """The sequential command killed once the second batch's rows are written, before its
    checkpoint: the first batch is the one the folder holds."""
    with pytest.MonkeyPatch.context() as patch:
        killer(patch, "checkpoint", 2)
        with pytest.raises(Killed):
            commands.run(editor, "tiny-gpt2", "sequential", out)


@pytest.mark.conform
@pytest.mark.parametrize("editor", ["memit", "easyedit-memit", "easyedit-emmet"])
def test_an_interrupted_stream_resumes_to_the_uninterrupted_records(
    editor: str,
    commands: Commands,
    shared_runs: Callable[[str, str, str], CliRun],
    tmp_path: Path,
) -> None:
    """MEMIT's and EMMET's batches depend on the weights and the harness's inputs only: the
    resumed stream loads the first batch's weights and redoes the second, to the records of
    the run never interrupted."""
    killed_after_the_first_batch(commands, editor, tmp_path)
    commands.run(editor, "tiny-gpt2", "sequential", tmp_path)
    whole = shared_runs(editor, "tiny-gpt2", "sequential")
    assert first_difference(records(whole.out), records(tmp_path)) is None


def test_an_easyedit_alphaedit_stream_is_not_resumed(
    commands: Commands, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its Kₚ is the editor's own, lost with the process: the resume is refused, naming the
    stream and why, and the folder is left as the kill left it."""
    killed_after_the_first_batch(commands, "easyedit-alphaedit", tmp_path)
    before = {p.name: p.read_bytes() for p in sorted(tmp_path.iterdir()) if p.is_file()}
    capsys.readouterr()
    assert main(commands.argv("easyedit-alphaedit", "tiny-gpt2", "sequential", tmp_path)) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "sequential-alphaedit-easyedit-alphaedit.state.pt holds a sequential alphaedit" in error
    assert "cannot be resumed" in error
    assert "new --out" in error
    after = {p.name: p.read_bytes() for p in sorted(tmp_path.iterdir()) if p.is_file()}
    assert after == before


def test_easyedit_alphaedit_single_batches_remember_no_undone_batch(
    commands: Commands, shared_runs: Callable[[str, str, str], CliRun], tmp_path: Path
) -> None:
    """Single mode: the second batch is written as if it were the first (AlphaEdit's keys of
    the undone first batch are not in its Kₚ): its records are those of a run of its facts
    alone."""
    both = shared_runs("easyedit-alphaedit", "tiny-gpt2", "single").rows()[SIZE:]
    only = ["--offset", str(SIZE), "--limit", str(SIZE)]  # the later options win
    alone = commands.run("easyedit-alphaedit", "tiny-gpt2", "single", tmp_path, *only).rows()
    for row_both, row_alone in zip(both, alone, strict=True):
        assert row_both["post"] == row_alone["post"]
        sites = [s["delta_norm"] for s in row_both["diagnostics"]["batch"]["sites"]]
        assert sites == [s["delta_norm"] for s in row_alone["diagnostics"]["batch"]["sites"]]
