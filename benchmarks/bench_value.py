"""The v* optimization: the public loop (whole model, full-vocabulary log-softmax at every
position, backward through autograd's default path) vs rome_fast.edit.value, same step count."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.conftest import REQUEST, EditSetup
from benchmarks.floors import Peaks, value_floor
from rome_fast.edit.naive import naive_value
from rome_fast.edit.value import build_value_batch, compute_v_star
from rome_fast.hparams.defaults import HParams
from rome_fast.model.loader import LoadedModel

# SmolLM2's naive loop takes minutes on 2 cores: the default run uses 5 iterations
# (4 steps); bench_edit measures the full 20 under the `slow` marker.
STEPS = 5


def value_work(
    loaded: LoadedModel, templates: list[str], padding_side: str = "right"
) -> tuple[int, int]:
    """(tokens δ reaches that the loss depends on, positions the loss reads): a rewriting
    prompt's from its subject-last token to its last, the essence prompt's subject-last only."""
    vb = build_value_batch(loaded.tokenizer, REQUEST, templates, padding_side)
    ends = vb.batch.offsets + vb.batch.attention_mask.sum(1)
    needed = int((ends - vb.batch.positions)[: vb.n_prompts].sum()) + 1
    return needed, vb.target_rows.numel() + 1


def value_setup_floor(peaks: Peaks, setup: EditSetup, hparams: HParams, forwards: int) -> Any:
    suffix, read = value_work(setup.loaded, setup.templates, hparams.v_star.padding_side)
    return value_floor(peaks, setup.loaded, setup.layer, suffix, read, forwards, forwards - 1)


@pytest.mark.parametrize("impl", ["naive", "fast"])
def test_value(
    run_bench: Callable[..., Any], peaks: Peaks, model_setup: EditSetup, impl: str
) -> None:
    s = model_setup
    hp = s.hparams.replace(v_num_grad_steps=STEPS)
    args = (s.loaded, s.site, REQUEST, s.templates, hp.v_star)
    if impl == "naive":
        fn: Callable[[], Any] = lambda: naive_value(*args)  # noqa: E731
    else:
        fn = lambda: compute_v_star(*args)  # noqa: E731
    run_bench(
        fn,
        group=f"v* {s.loaded.name} {STEPS} iterations",
        impl=impl,
        rounds=2,
        warmup_rounds=0,
        floor=value_setup_floor(peaks, s, hp, STEPS),
        describe=lambda r: {
            "forwards": len(r.loss_trace),
            "adam_steps": r.adam_steps,
            "final_loss": r.loss_trace[-1],
        },
    )
