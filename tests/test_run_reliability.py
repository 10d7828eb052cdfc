"""Run folders under misuse: identity of a run, refusals that change no file, failed edits,
GLUE steps across a resume, unreadable files. Tiny random GPT-2 and the fake editor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from rome_fast.cli.eval import config_from_args
from rome_fast.cli.main import build_parser
from rome_fast.edit.ownership import stored_weight
from rome_fast.eval import runner
from rome_fast.eval.data import resolve_data_path
from rome_fast.eval.files import read_lines, write_json
from rome_fast.eval.gates import compare
from rome_fast.eval.glue import TASKS as GLUE_TASKS
from rome_fast.eval.runner import Runner
from rome_fast.hparams.defaults import hparams_for
from rome_fast.model.loader import LoadedModel
from tests.faults import Killed, writes
from tests.test_runs import FakeEditor, config, loaded, make_cases, one_thread

__all__ = ["loaded", "one_thread"]  # fixtures used here

DATA = "counterfact/counterfact-rome-schema-sample.json"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def eval_args(*extra: str) -> Any:
    return build_parser().parse_args(
        ["eval", "--model", "random:tiny-gpt2", "--modes", "single", "--out", "unused", *extra]
    )


@pytest.fixture
def input_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder (the working directory) holding one file for each input option."""
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(resolve_data_path(DATA), tmp_path / "cases.json")
    (tmp_path / "c.npz").write_bytes(b"statistics")
    (tmp_path / "texts.txt").write_text("a document\n", encoding="utf-8")
    (tmp_path / "glue").mkdir()
    for name in GLUE_TASKS:
        (tmp_path / "glue" / f"{name}.jsonl").write_text("{}\n", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("option", "value", "field"),
    [
        ("--stats-samples", "7", "stats_samples"),
        ("--stats-npz", "c.npz", "stats_npz"),
        ("--stats-corpus", "texts.txt", "stats_corpus"),
    ],
)
@pytest.mark.usefixtures("input_files")
def test_statistics_options_are_part_of_the_run_identity(
    option: str, value: str, field: str
) -> None:
    hparams = hparams_for("random:tiny-gpt2")
    plain = config_from_args(eval_args(), "m", hparams).comparable()
    given = config_from_args(eval_args(option, value), "m", hparams).comparable()
    assert plain[field] is None
    assert str(given[field]).endswith(value), f"{option} {value} is not in the run's identity"


# One file of each input option, changed in place: (options, the file changed, its digest key)
CHANGED_IN_PLACE = [
    (("--data", "cases.json"), "cases.json", "data"),
    (("--stats-npz", "c.npz"), "c.npz", "stats_npz"),
    (("--stats-corpus", "texts.txt"), "texts.txt", "stats_corpus"),
    *(
        (("--glue-every", "1", "--glue-data", "glue"), f"glue/{name}.jsonl", f"glue:{name}")
        for name in GLUE_TASKS
    ),
]


@pytest.mark.parametrize(("options", "changed", "key"), CHANGED_IN_PLACE)
def test_a_file_changed_under_the_same_path_is_another_run(
    options: tuple[str, ...], changed: str, key: str, input_files: Path
) -> None:
    hparams = hparams_for("random:tiny-gpt2")
    before = config_from_args(eval_args(*options), "m", hparams).comparable()
    with (input_files / changed).open("a", encoding="utf-8") as handle:
        handle.write("\n")  # one byte more, same path
    after = config_from_args(eval_args(*options), "m", hparams).comparable()
    differ = {
        k
        for k in before["input_digests"]
        if before["input_digests"][k] != after["input_digests"][k]
    }
    assert differ == {key}, (
        f"{changed} changed in place; the run identity saw {differ or 'nothing'}"
    )


def test_editor_hyperparameters_are_part_of_the_run_identity() -> None:
    base = hparams_for("random:tiny-gpt2")
    one = config_from_args(eval_args(), "m", base).comparable()
    two = config_from_args(eval_args(), "m", base.replace(v_lr=0.1)).comparable()
    assert one != two


def test_resume_with_other_statistics_options_is_refused_and_changes_no_file(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    cases = make_cases(2)
    Runner(loaded, FakeEditor(loaded), cases, config(stats_samples=10), tmp_path).run()
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="stats_samples: 10 there, 20 now"):
        Runner(loaded, FakeEditor(loaded), cases, config(stats_samples=20), tmp_path).run()
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("mode", ["single", "sequential"])
def test_records_whose_config_is_gone_are_refused_not_adopted(
    loaded: LoadedModel, tmp_path: Path, mode: str
) -> None:
    cases = make_cases(2)
    Runner(
        loaded, FakeEditor(loaded), cases, config(modes=(mode,), stats_samples=10), tmp_path
    ).run()
    (tmp_path / "config.json").unlink()
    before = snapshot(tmp_path)
    for samples in (20, 10):  # other options, or the same: nothing says which made the records
        cfg = config(modes=(mode,), stats_samples=samples)
        with pytest.raises(ValueError, match=r"run records .* but no config\.json") as refused:
            Runner(loaded, FakeEditor(loaded), cases, cfg, tmp_path).run()
        assert "choose a new --out, or delete the folder" in str(refused.value)
        assert snapshot(tmp_path) == before


def test_refused_damaged_sequential_folder_changes_no_file(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    cases, cfg = make_cases(5), config(modes=("sequential",))
    Runner(loaded, FakeEditor(loaded), cases, cfg, tmp_path).run()
    path = tmp_path / "sequential-a.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1][: len(lines[1]) // 2] + "\n"  # a torn line with intact ones after it
    path.write_text("".join(lines))
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="damaged"):
        Runner(loaded, FakeEditor(loaded), cases, cfg, tmp_path).run()
    assert snapshot(tmp_path) == before


def glue_probe(model: torch.nn.Module, _tokenizer: Any, **_options: Any) -> dict[str, Any]:
    weight = stored_weight(model.get_submodule("transformer.h.1.mlp.c_proj"))
    return {"probe": {"weight_sum": float(weight.sum())}}


@pytest.mark.parametrize("torn", [False, True])
def test_sequential_resume_keeps_every_glue_step(
    loaded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torn: bool
) -> None:
    """Killed at the GLUE check after the last edit (steps 0, 2, 4, 5 of 5 edits), or torn
    in the middle of the check at step 2, the resumed run holds every step once."""
    monkeypatch.setattr(runner, "evaluate_glue", glue_probe)
    cases, cfg = make_cases(5), config(modes=("sequential",), glue_every=2)
    kill = ("glue", 2) if torn else ("glue", 4)
    with (
        pytest.MonkeyPatch.context() as patch,
        writes(patch, kill, torn=torn),
        pytest.raises(Killed),
    ):
        Runner(loaded, FakeEditor(loaded), cases, cfg, tmp_path).run()
    FakeEditor(loaded).restore()
    summary = Runner(loaded, FakeEditor(loaded), cases, cfg, tmp_path).run()
    steps = [g["step"] for g in summary["results"]["sequential"]["a"]["glue"]]
    assert steps == [0, 2, 4, 5], f"killed at {kill} (torn={torn}): GLUE steps {steps}"
    assert [g["step"] for g in read_lines(tmp_path / "glue-a.jsonl")] == steps


class FailingEditor(FakeEditor):
    """Refuses the edits of ``refuse`` (as the real editor refuses a disabling edit)."""

    def __init__(self, loaded: LoadedModel, refuse: frozenset[Any]) -> None:
        super().__init__(loaded)
        self.refuse = refuse

    def apply(self, prepared: Any, variant: str = "r-rome") -> Any:
        if prepared.case_id in self.refuse:
            raise ValueError("refused for the test")
        return super().apply(prepared, variant)

    def edit(self, request: Any, variant: str = "r-rome") -> Any:
        if request.case_id in self.refuse:
            raise ValueError("refused for the test")
        return super().edit(request, variant)


@pytest.mark.parametrize("mode", ["single", "sequential"])
def test_failed_edits_count_against_the_variant_and_fail_the_gate(
    loaded: LoadedModel, tmp_path: Path, mode: str
) -> None:
    cases = make_cases(3)
    everything = frozenset(c.case_id for c in cases)
    summary = Runner(
        loaded, FailingEditor(loaded, everything), cases, config(modes=(mode,)), tmp_path
    ).run()
    table = summary["results"][mode]["a"]
    assert table["failed"] == 3
    # The unedited model scores above 0 here, so 0 means the failures were counted as such.
    assert table["pre"]["NS"] > 0
    assert (table["ES"], table["EM"], table["PS"], table["PM"]) == (0.0, 0.0, 0.0, 0.0), table
    baseline = {
        "name": "lenient",
        "model": "random:tiny-gpt2",
        "mode": mode,
        "n_cases": 3,
        "tolerance": {"default": 100.0},
        "variants": {"a": {"NS": table["NS"]}},
    }
    result = compare(summary, baseline)
    assert not result.passed
    assert "failed edits" in result.report()


def test_empty_config_file_is_named_in_the_error(loaded: LoadedModel, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        Runner(loaded, FakeEditor(loaded), make_cases(2), config(), tmp_path).run()


def test_empty_reference_file_is_named_in_the_error(loaded: LoadedModel, tmp_path: Path) -> None:
    Runner(loaded, FakeEditor(loaded), make_cases(1), config(), tmp_path).run()
    (tmp_path / "reference.json").write_text("")
    with pytest.raises(ValueError, match=r"reference\.json is not valid JSON"):
        Runner(loaded, FakeEditor(loaded), make_cases(1), config(), tmp_path).run()


def test_json_files_are_replaced_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill between writing and renaming leaves the previous file whole."""
    path = tmp_path / "config.json"
    write_json(path, {"version": 1})

    def killed(*_args: Any) -> None:
        raise Killed("killed before the rename")

    monkeypatch.setattr(Path, "replace", killed)
    with pytest.raises(Killed):
        write_json(path, {"version": 2})
    assert json.loads(path.read_text()) == {"version": 1}
