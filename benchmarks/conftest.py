"""Shared fixtures and reporting for the pytest-benchmark suites (``nox -s bench``).

Each benchmark declares its ``impl`` (``naive``/``ref`` is the group's baseline, everything
else is compared with it) and the physical floor of its work (``benchmarks.floors``).
``extra_info`` of every result carries ``impl``, ``floor_seconds`` and its basis; the JSON
written by ``--benchmark-json`` gets ``speedup_vs_baseline`` and ``floor_fraction`` added,
and the terminal summary prints the same table.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from benchmarks.floors import Floor, Peaks, cpu_name, machine_peaks
from benchmarks.report import grouped, json_groups
from rome_fast.edit.request import EditRequest
from rome_fast.edit.templates import generate_context_templates
from rome_fast.hparams.defaults import HParams, hparams_for
from rome_fast.model.loader import LoadedModel, load_model, random_model
from rome_fast.model.site import EditedSite

REQUEST = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")
SEED = 0


# ----------------------------------------------------------------------------- machine


# ROME_BENCH_THREADS=1 on a machine whose cores other processes also use: with 2+ threads
# each parallel operator waits for a descheduled thread (measured: 72× on a tiny v* loop).
if os.environ.get("ROME_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["ROME_BENCH_THREADS"]))

_PEAKS: list[Peaks] = []
_LOAD_AT_START = os.getloadavg()


@pytest.fixture(scope="session")
def peaks() -> Peaks:
    """This CPU's measured bandwidth and float32 flop/s, the denominators of every floor."""
    if not _PEAKS:
        _PEAKS.append(machine_peaks("cpu"))
    return _PEAKS[0]


def pytest_benchmark_update_machine_info(machine_info: dict[str, Any]) -> None:
    # Only what identifies the machine: a saved run is compared only with the same one.
    machine_info["cpu_name"] = f"{cpu_name()} ({os.cpu_count()} logical cores)"
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()


# ----------------------------------------------------------------------------- models


@dataclass
class EditSetup:
    """A model ready to edit: hyperparameters, the context templates and a covariance."""

    loaded: LoadedModel
    hparams: HParams
    templates: list[str]
    C: torch.Tensor  # (d_in, d_in) float32, SPD

    @property
    def layer(self) -> int:
        return self.hparams.layer

    @property
    def site(self) -> EditedSite:
        return self.loaded.adapter.edited_site(self.loaded.model, self.layer)


def synthetic_second_moment(
    d_in: int, seed: int = SEED, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A seeded SPD matrix with a realistic spread of eigenvalues, built on ``device`` (timing
    does not depend on where C came from; its collection is benchmarked on its own)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    scale = torch.linspace(0.1, 3.0, d_in, device=device)
    keys = torch.randn(2 * d_in, d_in, generator=generator, device=device) * scale
    return keys.T @ keys / keys.shape[0]


def make_setup(loaded: LoadedModel, hparams: HParams, seed: int = SEED) -> EditSetup:
    templates = generate_context_templates(
        loaded.model,
        loaded.tokenizer,
        hparams.v_star.context_template_schedule,
        seed=seed,
        top_k=hparams.v_star.context_template_top_k,
    )
    d_in = loaded.adapter.edited_site(loaded.model, hparams.layer).d_in
    C = synthetic_second_moment(d_in, seed, loaded.device)
    return EditSetup(loaded, hparams, templates, C)


@pytest.fixture(scope="session")
def tiny_gpt2() -> EditSetup:
    loaded = random_model("tiny-gpt2", seed=SEED)
    return make_setup(loaded, hparams_for("random:tiny-gpt2"))


@pytest.fixture(scope="session")
def smollm2() -> EditSetup:
    try:
        loaded = load_model("smollm2")
    except FileNotFoundError as err:
        pytest.skip(f"SmolLM2 is not available: {err}")
    return make_setup(loaded, hparams_for("smollm2"))


@pytest.fixture(params=["tiny-gpt2", "smollm2"])
def model_setup(request: pytest.FixtureRequest) -> EditSetup:
    name = "tiny_gpt2" if request.param == "tiny-gpt2" else "smollm2"
    setup: EditSetup = request.getfixturevalue(name)
    return setup


# ----------------------------------------------------------------------------- running


@dataclass
class Measured:
    group: str
    name: str
    impl: str
    mean: float
    floor: Floor | None


_MEASURED: list[Measured] = []


@pytest.fixture
def run_bench(benchmark: Any, request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``run_bench(fn, group=, impl=, floor=, rounds=, describe=, **extra)`` → fn's result.

    ``describe(result)`` adds facts about the result (steps run, tokens) to ``extra_info``.
    """

    def run(
        fn: Callable[[], Any],
        *,
        group: str,
        impl: str,
        floor: Floor | None = None,
        rounds: int = 5,
        warmup_rounds: int = 1,
        setup: Callable[[], Any] | None = None,
        describe: Callable[[Any], dict[str, Any]] | None = None,
        **extra: Any,
    ) -> Any:
        benchmark.group = group
        benchmark.extra_info.update(impl=impl, **extra)
        if floor is not None:
            benchmark.extra_info.update(
                floor_seconds=floor.seconds,
                floor_basis=floor.basis,
                floor_bytes=floor.bytes,
                floor_flops=floor.flops,
            )
        result = benchmark.pedantic(
            fn, setup=setup, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds
        )
        if describe is not None:
            benchmark.extra_info.update(describe(result))
        stats = getattr(benchmark, "stats", None)
        if stats is not None:
            _MEASURED.append(Measured(group, request.node.name, impl, stats.stats.mean, floor))
        return result

    return run


def speedup_in_run(group: str, impl: str) -> float | None:
    """The baseline's mean over ``impl``'s, both measured in this run in ``group``; None when
    either is not (deselected, or skipped)."""
    for name, base, members in grouped(_MEASURED, lambda m: m.group, lambda m: m.impl):
        mine = [m for m in members if m.impl == impl]
        if name == group and base is not None and mine:
            return base.mean / mine[-1].mean
    return None


def pytest_benchmark_update_json(output_json: dict[str, Any]) -> None:
    """Add ``speedup_vs_baseline`` and ``floor_fraction`` to each result's extra_info, and
    the run's conditions (measured peaks, load) at the top level."""
    # Other processes may share the cores: the load says how far to trust absolute times.
    output_json["conditions"] = {
        "load_average_at_start": _LOAD_AT_START,
        "load_average_at_end": os.getloadavg(),
        "peaks": _PEAKS[0].as_dict() if _PEAKS else None,
    }
    for _group, baseline, entries in json_groups(output_json["benchmarks"]):
        for entry in entries:
            info, mean = entry["extra_info"], entry["stats"]["mean"]
            if baseline is not None and entry is not baseline:
                info["baseline"] = baseline["name"]
                info["speedup_vs_baseline"] = baseline["stats"]["mean"] / mean
            if "floor_seconds" in info:
                info["floor_fraction"] = info["floor_seconds"] / mean


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _MEASURED:
        return
    write = terminalreporter.write_line
    terminalreporter.section("speedups against the baseline of each group, and floors")
    write(f"{'group':34} {'impl':14} {'mean s':>10} {'speedup':>8} {'floor s':>10} {'of floor':>8}")
    for group, base, members in grouped(_MEASURED, lambda m: m.group, lambda m: m.impl):
        for m in members:
            compared = base is not None and m is not base
            speedup = f"{base.mean / m.mean:8.2f}" if base is not None and compared else " " * 8
            floor = f"{m.floor.seconds:10.2e}" if m.floor else " " * 10
            share = f"{m.floor.seconds / m.mean:8.1%}" if m.floor else ""
            write(f"{group:34} {m.impl:14} {m.mean:10.4f} {speedup} {floor} {share}")
