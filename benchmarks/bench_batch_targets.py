"""The targets z of n facts (MEMIT's ``compute_z``): the public code's flow, one optimization
per fact (``compute_batch_targets`` with one request at a time, impl ``per-fact``: the group's
baseline), vs one optimization of all n facts in one batch; same code, same steps, so the
speedup is what batching the facts saves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.batch_requests import facts
from benchmarks.conftest import EditSetup
from rome_fast.edit.batch_targets import BatchTargets, compute_batch_targets

N_FACTS = 16
STEPS = 5  # 4 Adam steps, as the v* benchmark
FACTS = facts(N_FACTS)


@pytest.mark.parametrize("impl", ["per-fact", "batched"])
def test_batch_targets(run_bench: Callable[..., Any], tiny_gpt2: EditSetup, impl: str) -> None:
    s = tiny_gpt2
    options = s.hparams.replace(v_num_grad_steps=STEPS).v_star

    def per_fact() -> list[BatchTargets]:
        return [compute_batch_targets(s.loaded, s.layer, [f], s.templates, options) for f in FACTS]

    def batched() -> list[BatchTargets]:
        return [compute_batch_targets(s.loaded, s.layer, FACTS, s.templates, options)]

    run_bench(
        per_fact if impl == "per-fact" else batched,
        group=f"z of {N_FACTS} facts {s.loaded.name} {STEPS} iterations",
        impl=impl,
        rounds=2,
        warmup_rounds=0,
        facts=N_FACTS,
        templates=len(s.templates),
        describe=lambda runs: {"adam_steps": sum(sum(r.adam_steps) for r in runs)},
    )
