"""A whole edit with the statistics and templates cached (the state after the first edit):
NaiveEditor vs Editor on the same model, request, templates and C. SmolLM2 with the real
hyperparameters (20 iterations) is `slow`: run it with ``-m slow`` or ``-m "slow or not slow"``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.bench_keys import prompt_tokens
from benchmarks.bench_value import value_work
from benchmarks.conftest import REQUEST, EditSetup
from benchmarks.floors import (
    Peaks,
    combine,
    keys_floor,
    model_dtype,
    update_factors_floor,
    value_floor,
)
from rome_fast.edit.editor import Editor
from rome_fast.edit.naive import NaiveEditor
from rome_fast.edit.request import EditResult
from rome_fast.model.loader import LoadedModel
from rome_fast.model.weights import weight_matrix

# impl -> (editor, matmul precision of the v* loop); tf32/bf16 are the fast path's opt-ins.
IMPLS: dict[str, tuple[type[Editor], str]] = {
    "naive": (NaiveEditor, "fp32"),
    "fast": (Editor, "fp32"),
    "fast-tf32": (Editor, "tf32"),
    "fast-bf16": (Editor, "bf16"),
}
CPU_IMPLS = [impl for impl, (_, precision) in IMPLS.items() if precision != "tf32"]


def edit_floor(
    peaks: Peaks,
    loaded: LoadedModel,
    layer: int,
    templates: list[str],
    steps: int,
    precision: str = "fp32",
) -> Any:
    """keys + v* (``steps`` forward, one fewer backward, at ``precision``) + update factors."""
    W = weight_matrix(loaded.adapter.edited_module(loaded.model, layer))
    suffix, read = value_work(loaded, templates)
    return combine(
        keys_floor(peaks, loaded, layer, prompt_tokens(loaded, templates)),
        value_floor(peaks, loaded, layer, suffix, read, steps, steps - 1, precision),
        update_factors_floor(peaks, int(W.shape[0]), int(W.shape[1]), model_dtype(loaded)),
        basis=f"keys + v* ({steps} fwd, {steps - 1} bwd) + update",
    )


def bench_edit(
    run_bench: Callable[..., Any], peaks: Peaks, s: EditSetup, impl: str, rounds: int
) -> None:
    cls, precision = IMPLS[impl]
    hparams = s.hparams.replace(v_precision=precision)
    editor = cls(s.loaded, hparams=hparams, stats=s.C, templates=s.templates)
    editor.covariance(s.layer)  # stats cached, as after a first edit
    if isinstance(editor, NaiveEditor):
        editor.inverse_covariance(s.layer)

    def describe(r: EditResult) -> dict[str, Any]:
        editor.restore()
        return {
            "forwards": len(r.loss_trace),
            "adam_steps": r.adam_steps,
            "phases": r.timings,
            "edit_seconds_reported": r.edit_seconds,
        }

    run_bench(
        lambda: editor.edit(REQUEST, "r-rome"),
        setup=editor.restore,
        group=f"edit r-rome {s.loaded.name} (stats cached)",
        impl=impl,
        rounds=rounds,
        warmup_rounds=0,
        floor=edit_floor(
            peaks, s.loaded, s.layer, s.templates, s.hparams.v_star.num_grad_steps, precision
        ),
        describe=describe,
        dtype=str(model_dtype(s.loaded)),
        v_precision=precision,
        v_num_grad_steps=s.hparams.v_star.num_grad_steps,
    )


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_edit_tiny(
    run_bench: Callable[..., Any], peaks: Peaks, tiny_gpt2: EditSetup, impl: str
) -> None:
    bench_edit(run_bench, peaks, tiny_gpt2, impl, rounds=3)


@pytest.mark.slow
@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_edit_smollm2(
    run_bench: Callable[..., Any], peaks: Peaks, smollm2: EditSetup, impl: str
) -> None:
    bench_edit(run_bench, peaks, smollm2, impl, rounds=1 if impl == "naive" else 2)
