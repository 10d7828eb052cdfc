"""What the run's numbers are made of: the collapse threshold, the slice a resumed folder
belongs to, and which scores the sequential table holds. Fake editor of tests/test_runs.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rome_fast.eval.collapse import entropy_threshold
from rome_fast.eval.files import read_lines
from rome_fast.eval.runner import Runner
from rome_fast.model.loader import LoadedModel, random_model
from rome_ref import metrics as ref
from tests.test_runs import FakeEditor, _kill_at, config, loaded, make_cases, one_thread

__all__ = ["loaded", "one_thread"]  # fixtures shared with tests/test_runs.py


def test_entropy_threshold_is_half_the_unedited_entropy() -> None:
    assert entropy_threshold({"ngram_entropy": 3.0}, config()) == 1.5
    assert entropy_threshold({"ngram_entropy": 3.0}, config(collapse_entropy=0.7)) == 0.7


def test_resume_refuses_case_lines_of_another_slice(loaded: LoadedModel, tmp_path: Path) -> None:
    """config.json matches, but the case file was copied in from another slice's folder."""
    cases = make_cases(3)
    shifted = [dataclasses.replace(c, case_id=int(c.case_id) + 50) for c in cases]
    Runner(loaded, FakeEditor(loaded), cases, config(), tmp_path / "a").run()
    Runner(loaded, FakeEditor(loaded), shifted, config(), tmp_path / "b").run()
    copied = (tmp_path / "a" / "single-a.jsonl").read_text()
    (tmp_path / "b" / "single-a.jsonl").write_text(copied)
    with pytest.raises(ValueError, match="another data slice"):
        Runner(loaded, FakeEditor(loaded), shifted, config(), tmp_path / "b").run()


def test_sequential_table_holds_the_final_scores(loaded: LoadedModel, tmp_path: Path) -> None:
    """The paper's Table 2: every case scored after the last edit, not right after its own."""
    cfg = config(modes=("sequential",))
    editor = FakeEditor(loaded, huge=frozenset({102}))
    summary = Runner(loaded, editor, make_cases(4), cfg, tmp_path).run()
    table = summary["results"]["sequential"]["a"]
    final = ref.aggregate(
        r["metrics_post"] for r in read_lines(tmp_path / "sequential-a-final.jsonl")
    )
    immediate = ref.aggregate(
        r["metrics_post"] for r in read_lines(tmp_path / "sequential-a.jsonl")
    )
    assert any(final[m] != immediate[m] for m in ref.TABLE_METRICS), (
        "the test cannot tell them apart"
    )
    for metric in ref.TABLE_METRICS:
        assert table[metric] == pytest.approx(final[metric], abs=1e-12), metric
        assert table["immediate"][metric] == pytest.approx(immediate[metric], abs=1e-12), metric


def test_resume_drops_rows_written_after_the_last_checkpoint(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    """Killed between a row and its checkpoint (every 2 edits here): the resumed run redoes
    the unsaved edit instead of keeping its row, so no case is counted twice."""
    cases, cfg = make_cases(4), config(modes=("sequential",), checkpoint_every=2)
    killed = Runner(
        loaded, FakeEditor(loaded), cases, cfg, tmp_path, on_case=_kill_at("sequential", 3)
    )
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    assert len(read_lines(tmp_path / "sequential-a.jsonl")) == 3  # one past the checkpoint
    FakeEditor(loaded).restore()
    fresh = random_model("tiny-gpt2")
    Runner(fresh, FakeEditor(fresh), cases, cfg, tmp_path).run()
    ids = [r["case_id"] for r in read_lines(tmp_path / "sequential-a.jsonl")]
    assert ids == [c.case_id for c in cases]
