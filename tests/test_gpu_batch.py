"""The batched section of ``benchmarks.gpu_bench`` (MEMIT on 1000 facts at GPT-J's shapes on a
lent GPU) runs end to end on the CPU at its tiny size: both rows timed, seconds per fact and
their ratio recorded in results.json and summary.md, and printed as the run goes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import gpu_bench

OTHER_SECTIONS = "machine,accuracy,C solve,in-place update,edits,stats"


@pytest.mark.slow
def test_the_batch_section_runs_at_its_tiny_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--out", str(tmp_path), "--tiny", "--device", "cpu", "--skip", OTHER_SECTIONS]
    assert gpu_bench.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["sections"]) == ["batch edits"]
    naive, batched, ratio = results["sections"]["batch edits"]
    assert (naive["impl"], naive["facts"]) == ("naive", gpu_bench.TINY.batch_facts[0])
    assert (batched["impl"], batched["facts"]) == ("batched", gpu_bench.TINY.batch_facts[1])
    for row in (naive, batched):
        assert row["seconds_per_fact"] == pytest.approx(row["median"] / row["facts"])
        assert set(row["phases"]) >= {"targets", "update"}, row["phases"]
    per_fact = naive["seconds_per_fact"] / batched["seconds_per_fact"]
    assert ratio["speedup_per_fact"] == pytest.approx(per_fact)
    printed = capsys.readouterr().out
    assert "## batch edits" in printed
    assert "naive/batched, per fact" in (tmp_path / "summary.md").read_text()
