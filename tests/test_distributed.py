"""Runs and statistics on a local Ray cluster started here (2 CPUs, tiny random models):
the sharded run equals the same run in one process record for record (ROME's variants and a
batched method's batches), a killed worker loses nothing, an interrupted driver resumes,
statistics sharded three ways equal unsharded ones.

Marked ``ray`` (``nox -s ray``); skipped where Ray is not installed."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from rome_fast.cli.eval import EditorRecipe
from rome_fast.edit.editor import Editor
from rome_fast.eval.batch_runs import BatchRuns
from rome_fast.eval.config import RunConfig
from rome_fast.eval.data import EvalCase
from rome_fast.eval.distributed import run_on_cluster
from rome_fast.eval.files import read_lines
from rome_fast.eval.reproducibility import without_timings
from rome_fast.eval.runner import Runner
from rome_fast.hparams.defaults import hparams_for
from rome_fast.infra.cluster import Cluster
from rome_fast.methods.memit.update import MemitHParams
from rome_fast.model.loader import LoadedModel, random_model
from rome_fast.stats import collect as stats
from rome_fast.stats.corpus import from_texts
from rome_fast.stats.sharded import sharded_collector
from tests.models import key_dim
from tests.test_stats import varied_texts

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("one_torch_thread")]

MODEL = "random:tiny-gpt2"
N_CASES = 4


@pytest.fixture(scope="module")
def cluster() -> Iterator[ModuleType]:
    temp = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must stay < 108 bytes
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def make_cases(n: int) -> list[EvalCase]:
    subjects = ["Danielle Darrieux", "Toyota", "Miles Davis", "the Nile", "Mozart"]
    return [
        EvalCase(
            case_id=200 + i,
            prompt="The home of {} is",
            subject=subjects[i % len(subjects)],
            target_new=("London", "Paris", "Berlin")[i % 3],
            target_true="Rome",
            paraphrase_prompts=(f"Everyone knows that {subjects[i % len(subjects)]} is in",),
            neighborhood_prompts=("The home of Zeus is",),
            neighborhood_target="Rome",
        )
        for i in range(n)
    ]


def config(modes: tuple[str, ...]) -> RunConfig:
    return RunConfig(
        model=MODEL,
        data="<memory>",
        variants=("rome", "r-rome"),
        modes=modes,
        n_generations=2,
        generation_tokens=4,
        collapse_min_history=2,
    )


# A batched method's runs: 7 cases in batches of 2 (the last one short), at two layers.
MEMIT = MemitHParams(layers=(0, 1), mom2_update_weight=1.0)
BATCHES = BatchRuns("memit", MEMIT, 2)
N_FACTS = 7


def recipe(loaded: LoadedModel, layers: tuple[int, ...] | None = None) -> EditorRecipe:
    hp = hparams_for(MODEL).replace(context_template_schedule=((5, 2),), v_num_grad_steps=5)
    d_in = key_dim(loaded, hp.layer)
    return EditorRecipe.of(Editor(loaded, hparams=hp, stats=torch.eye(d_in)), layers)


def batched_config(modes: tuple[str, ...]) -> RunConfig:
    return dataclasses.replace(
        config(modes),
        variants=("memit",),
        method="memit",
        facts_per_batch=BATCHES.size,
        method_hparams=dataclasses.asdict(MEMIT),
    )


def runner(
    out: Path, modes: tuple[str, ...], batched: bool = False, **options: Any
) -> tuple[Runner, EditorRecipe]:
    loaded = random_model(MODEL.removeprefix("random:"))
    make = recipe(loaded, MEMIT.layers if batched else None)
    run = Runner(
        loaded,
        make(loaded),
        make_cases(N_FACTS if batched else N_CASES),
        batched_config(modes) if batched else config(modes),
        out,
        fresh_editor=lambda: make(loaded),
        batched=BATCHES if batched else None,
        **options,
    )
    return run, make


def on_cluster(out: Path, modes: tuple[str, ...], **options: Any) -> dict[str, Any]:
    run, make = runner(out, modes, progress=False, **options)
    return run_on_cluster(run, make, Cluster(workers=2), model=MODEL, dtype=torch.float32, seed=0)


def records(folder: Path, pattern: str) -> dict[str, list[Any]]:
    files = sorted(folder.glob(pattern))
    assert files, f"no {pattern} in {folder}"
    return {f.name: without_timings(read_lines(f)) for f in files}


def assert_same_records(one: Path, sharded: Path, pattern: str) -> None:
    expected, got = records(one, pattern), records(sharded, pattern)
    assert got.keys() == expected.keys()
    for name in expected:
        for i, (a, b) in enumerate(zip(expected[name], got[name], strict=True)):
            assert a == b, f"{name} line {i + 1}: one process {a}\n!= sharded {b}"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same run in this process, single and sequential."""
    out = tmp_path_factory.mktemp("one-process")
    run, _ = runner(out, ("single", "sequential"))
    torch.set_num_threads(1)
    run.run()
    return out


@pytest.mark.usefixtures("cluster")
@pytest.mark.parametrize("mode", ["single", "sequential"])
def test_sharded_run_equals_the_one_process_run(
    one_process: Path, tmp_path: Path, mode: str
) -> None:
    summary = on_cluster(tmp_path, (mode,))
    assert_same_records(one_process, tmp_path, f"{mode}-*.jsonl")
    assert json.loads((tmp_path / "reference.json").read_text()) == json.loads(
        (one_process / "reference.json").read_text()
    )
    assert summary["execution"]["workers"] == 2
    assert summary["execution"]["devices"] == ["cpu", "cpu"]
    assert summary["execution"]["retried_cases"] == 0


def kill_a_worker_at(mode: str, index: int) -> Callable[[str, str, int], None]:
    """A test hook for the driver's loop: kills one of the run's actors (as ``ray.kill``
    or the out-of-memory killer would) when the loop reaches case ``index`` of ``mode``."""
    killed: list[str] = []

    def hook(m: str, _variant: str, i: int) -> None:
        if (m, i) != (mode, index) or killed:
            return
        named = ray.util.list_named_actors(all_namespaces=True)
        (first, *_) = sorted(
            (a["name"], a["namespace"]) for a in named if a["name"].startswith("rome-eval")
        )
        ray.kill(ray.get_actor(first[0], namespace=first[1]), no_restart=True)
        killed.append(first[0])

    return hook


# Single: killed as the driver waits for the first case (every case is queued, two on each
# actor); sequential: killed between the first and the second edit of a stream.
@pytest.mark.usefixtures("cluster")
@pytest.mark.parametrize(("mode", "index"), [("single", 0), ("sequential", 1)])
def test_a_killed_worker_loses_no_case_and_counts_none_twice(
    one_process: Path, tmp_path: Path, mode: str, index: int
) -> None:
    summary = on_cluster(tmp_path, (mode,), on_case=kill_a_worker_at(mode, index))
    ids = [c.case_id for c in make_cases(N_CASES)]
    for variant in ("rome", "r-rome"):
        rows = read_lines(tmp_path / f"{mode}-{variant}.jsonl")
        assert [r["case_id"] for r in rows] == ids
    assert_same_records(one_process, tmp_path, f"{mode}-*.jsonl")
    assert summary["execution"]["retried_cases"] >= 1
    assert summary["results"][mode]["rome"]["n"] == N_CASES


@pytest.mark.usefixtures("cluster")
def test_an_interrupted_driver_resumes_from_the_written_records(
    one_process: Path, tmp_path: Path
) -> None:
    def interrupt(_mode: str, variant: str, index: int) -> None:
        if (variant, index) == ("r-rome", 2):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        on_cluster(tmp_path, ("single",), on_case=interrupt)
    assert len(read_lines(tmp_path / "single-r-rome.jsonl")) == 2
    summary = on_cluster(tmp_path, ("single",))
    assert_same_records(one_process, tmp_path, "single-*.jsonl")
    assert summary["results"]["single"]["r-rome"]["n"] == N_CASES


@pytest.mark.usefixtures("cluster")
def test_statistics_sharded_three_ways_equal_unsharded() -> None:
    # 3 sorting chunks of 2 × SORT_CHUNK_BATCHES documents: one per shard.
    batch_size = 2
    corpus = from_texts(varied_texts(3 * batch_size * stats.SORT_CHUNK_BATCHES - 5))
    loaded = random_model(MODEL.removeprefix("random:"))
    options: dict[str, Any] = {
        "n_samples": 10_000,
        "dtype": torch.float64,
        "batch_size": batch_size,
        "max_length": 16,
        "progress": False,
    }
    whole = stats.collect_second_moment(loaded, 1, corpus, **options)
    collect = sharded_collector(Cluster(workers=2), MODEL, torch.float32, 0, shards=3)
    sharded = collect(loaded, 1, corpus, **options)
    assert sharded.provenance["shards"] == 3
    assert sharded.count == whole.count
    assert sharded.provenance["documents"] == whole.provenance["documents"]
    assert sharded.sum.dtype == torch.float64
    scale = float(whole.sum.abs().max())
    torch.testing.assert_close(sharded.sum, whole.sum, rtol=0, atol=1e-12 * scale)


@pytest.fixture(scope="module")
def batched_one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference of the batched runs: the same run in this process, both modes."""
    out = tmp_path_factory.mktemp("batched-one-process")
    run, _ = runner(out, ("single", "sequential"), batched=True)
    torch.set_num_threads(1)
    run.run()
    return out


def batch_logs(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "sequential-memit.batches").iterdir())


@pytest.mark.usefixtures("cluster")
@pytest.mark.parametrize("mode", ["single", "sequential"])
def test_sharded_batches_equal_the_one_process_batches(
    batched_one_process: Path, tmp_path: Path, mode: str
) -> None:
    summary = on_cluster(tmp_path, (mode,), batched=True)
    assert_same_records(batched_one_process, tmp_path, f"{mode}-*.jsonl")
    assert summary["execution"]["workers"] == 2
    assert summary["execution"]["retried_cases"] == 0
    if mode == "sequential":  # logged by the driver, one folder per batch
        assert batch_logs(tmp_path) == batch_logs(batched_one_process)


@pytest.mark.usefixtures("cluster")
def test_a_killed_worker_loses_no_batch_and_counts_its_facts(
    batched_one_process: Path, tmp_path: Path
) -> None:
    """Killed as the driver waits for the first batch: the batches are queued two on each
    actor, so the dead one held batches 0 and 1 (4 facts) or 2 and 3 (3 facts)."""
    summary = on_cluster(tmp_path, ("single",), batched=True, on_case=kill_a_worker_at("single", 0))
    assert_same_records(batched_one_process, tmp_path, "single-*.jsonl")
    assert summary["execution"]["retried_cases"] in (4, 3)


@pytest.mark.usefixtures("cluster")
def test_an_interrupted_batched_stream_resumes_on_an_actor_from_the_driver_logs(
    batched_one_process: Path, tmp_path: Path
) -> None:
    """Interrupted before its second batch; resumed, the actor replays the first batch from
    the log the driver read and sent, then goes on."""

    def interrupt(_mode: str, _variant: str, index: int) -> None:
        if index == BATCHES.size:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        on_cluster(tmp_path, ("sequential",), batched=True, on_case=interrupt)
    assert batch_logs(tmp_path) == ["batch-00000"]
    on_cluster(tmp_path, ("sequential",), batched=True)
    assert_same_records(batched_one_process, tmp_path, "sequential-*.jsonl")
