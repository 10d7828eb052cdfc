"""Shared set-up of the batched conformance tests and their table: one harness call on a fresh
tiny model (two batches of three facts, fixed templates, a seeded random SPD C per layer)."""

from __future__ import annotations

from rome_fast.conform.batch_protocol import BatchEditorUnderTest
from rome_fast.conform.batch_run import BatchReport, BatchSettings, run_batch_conformance
from rome_fast.conform.cases import CASES
from rome_fast.edit.batch_keys import KeyChoice
from rome_fast.edit.request import EditRequest
from rome_fast.hparams.batched import MethodHParams
from rome_fast.methods.memit.update import MemitHParams
from tests.conform_setup import TEMPLATES
from tests.models import fresh_model, key_dim, random_spd, tiny_hparams, weights_of

LAYERS = (0, 1)
# λ = 100 lets the batch's keys dominate the random unit-scale C (as test_public_memit): with
# the public 15000, ΔW is ~1e-4 of W and the float32 write's rounding hides a bf16 update
MEMIT = MemitHParams(layers=LAYERS, mom2_update_weight=100.0)
TWO_BATCHES = [list(CASES[:3]), list(CASES[3:6])]
THREE_BATCHES = [list(CASES[i : i + 2]) for i in (0, 2, 4)]  # a trace bending a later batch


def conform_batches(
    editor: BatchEditorUnderTest,
    family: str = "tiny-gpt2",
    method: MethodHParams = MEMIT,
    *,
    expect: KeyChoice | None = None,
    sequential: bool = True,
    timeout: float | None = None,
    batches: list[list[EditRequest]] | None = None,
) -> BatchReport:
    """The harness on a fresh ``family`` model (``batches``: ``TWO_BATCHES`` unless given);
    checks that the model leaves as it came."""
    loaded = fresh_model(family)
    C = {layer: random_spd(key_dim(loaded, layer), seed=layer + 1) for layer in LAYERS}
    settings = BatchSettings(tiny_hparams(family), method, C, TEMPLATES)
    before = weights_of(loaded)
    report = run_batch_conformance(
        editor,
        loaded,
        TWO_BATCHES if batches is None else batches,
        settings,
        expect=expect,
        sequential=sequential,
        timeout=timeout,
    )
    after = weights_of(loaded)
    assert all(bool((after[n] == before[n]).all()) for n in before), "the model left changed"
    return report


def failed(report: BatchReport) -> set[str]:
    return {name for name, p in report.properties().items() if p["passed"] is False}
