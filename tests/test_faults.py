"""Faults at every step: a run killed at the k-th write of each kind (config, reference,
per-case record, checkpoint, GLUE check, final scoring, summary), half-written, then
resumed by a fresh process, equals an uninterrupted run record for record.

The default suite kills at the first and the last write of each kind; ``-m faults`` (the
``faults`` nox session) kills at every write, torn and clean.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from rome_fast.edit.ownership import stored_weight
from rome_fast.eval import runner
from rome_fast.eval.config import RunConfig
from rome_fast.eval.runner import Runner
from rome_fast.model.loader import LoadedModel, random_model
from tests.faults import Killed, first_difference, records, writes
from tests.test_runs import LAYER, FakeEditor, config, make_cases

MODES = ("single", "sequential")
CASES = make_cases(3)
GLUE_EVERY = 2  # steps 0, 2 and 3: the last edit is not a multiple of it


def run_config(mode: str) -> RunConfig:
    return config(
        modes=(mode,), variants=("a", "b"), glue_every=GLUE_EVERY if mode == "sequential" else 0
    )


def glue_probe(model: torch.nn.Module, _tokenizer: Any, **_options: Any) -> dict[str, Any]:
    """Stands in for the GLUE checks: a number that depends on the edited weight, so a check
    made at the wrong step (or on the wrong weights) differs from the uninterrupted one."""
    weight = stored_weight(model.get_submodule(f"transformer.h.{LAYER}.mlp.c_proj"))
    return {"probe": {"weight_sum": float(weight.double().sum())}}


@pytest.fixture(scope="module")
def _patched() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "evaluate_glue", glue_probe)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)


def new_process_runner(out: Path, mode: str) -> Runner:
    """What a new process builds: a freshly loaded model and editor."""
    loaded: LoadedModel = random_model("tiny-gpt2")
    return Runner(
        loaded,
        FakeEditor(loaded),
        CASES,
        run_config(mode),
        out,
        fresh_editor=lambda: FakeEditor(loaded),
    )


@pytest.fixture(scope="module")
def uninterrupted(
    _patched: None, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[dict[str, Any], dict[str, int]]]:
    """Per mode: the records of a run never interrupted, and how many writes of each kind."""
    found = {}
    for mode in MODES:
        out = tmp_path_factory.mktemp(f"whole-{mode}")
        with pytest.MonkeyPatch.context() as patch, writes(patch) as counts:
            new_process_runner(out, mode).run()
        found[mode] = (records(out), dict(counts))
    return found


def kill_points(everywhere: bool) -> list[tuple[str, str, int, bool]]:
    """(mode, kind, k, torn); the write counts per kind follow from CASES and run_config."""
    n, variants = len(CASES), 2
    counts = {
        "single": {"config": 1, "reference": 1, "case": n * variants, "summary": 1},
        "sequential": {
            "config": 1,
            "reference": 1,
            "case": n * variants,
            "checkpoint": n * variants,
            "glue": len({0, *range(GLUE_EVERY, n + 1, GLUE_EVERY), n}) * variants,
            "final": n * variants,
            "summary": 1,
        },
    }
    points = []
    for mode, kinds in counts.items():
        for kind, total in kinds.items():
            ks = range(1, total + 1) if everywhere else sorted({1, total})
            for torn in (True, False) if everywhere else (True,):
                points += [(mode, kind, k, torn) for k in ks]
    return points


def all_kill_points() -> list[Any]:
    """The first and last write of each kind in the default suite, the rest under -m faults."""
    quick = kill_points(everywhere=False)
    return [
        point if point in quick else pytest.param(*point, marks=pytest.mark.faults)
        for point in kill_points(everywhere=True)
    ]


@pytest.mark.parametrize(("mode", "kind", "k", "torn"), all_kill_points(), ids=str)
def test_run_killed_at_a_write_resumes_exactly(
    uninterrupted: dict[str, tuple[dict[str, Any], dict[str, int]]],
    tmp_path: Path,
    mode: str,
    kind: str,
    k: int,
    torn: bool,
) -> None:
    expected, counts = uninterrupted[mode]
    assert counts.get(kind, 0) >= k, f"the run makes {counts.get(kind, 0)} {kind} writes"
    out = tmp_path / "run"
    with (
        pytest.MonkeyPatch.context() as patch,
        writes(patch, (kind, k), torn),
        pytest.raises(Killed),
    ):
        new_process_runner(out, mode).run()
    new_process_runner(out, mode).run()
    difference = first_difference(expected, records(out))
    assert difference is None, (
        f"killed at {kind} write {k} ({'torn' if torn else 'clean'}, {mode}), then resumed: "
        f"{difference}; reproduce with pytest -m faults -k '{mode}-{kind}-{k}-'"
    )


def test_uninterrupted_counts_match_the_kill_points(
    uninterrupted: dict[str, tuple[dict[str, Any], dict[str, int]]],
) -> None:
    """The kill points cover every write the run makes, and no write the run does not make."""
    planned: dict[str, dict[str, int]] = {}
    for mode, kind, k, _ in kill_points(everywhere=True):
        planned.setdefault(mode, {})[kind] = max(k, planned.get(mode, {}).get(kind, 0))
    assert {mode: counts for mode, (_, counts) in uninterrupted.items()} == planned
