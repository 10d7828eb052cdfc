"""Shared set-up of the conformance tests: the public code under test and one harness call."""

from __future__ import annotations

from typing import Any

from rome_fast.conform.cases import conformance_cases
from rome_fast.conform.protocol import EditorUnderTest
from rome_fast.conform.run import ConformReport, run_conformance
from rome_fast.model.loader import LoadedModel
from tests.models import fresh_model, key_dim, random_spd, tiny_hparams

# No braces: the public code formats each template twice (see PublicEditor.edit).
TEMPLATES = ["{}", "Once upon a time. {}", "He said hello. {}"]


def conform(
    editor: EditorUnderTest,
    family: str = "tiny-gpt2",
    *,
    expect: str | None = None,
    cases: int = 1,
    steps: int = 3,
    **options: Any,
) -> ConformReport:
    """The harness on a fresh tiny model with fixed templates and a random SPD C
    (``options``: ``sequential``, ``timeout``)."""
    return conform_on(
        fresh_model(family), editor, expect=expect, cases=cases, steps=steps, **options
    )


def conform_on(
    loaded: LoadedModel,
    editor: EditorUnderTest,
    *,
    expect: str | None = "r-rome",
    cases: int = 1,
    steps: int = 3,
    **options: Any,
) -> ConformReport:
    """The harness on ``loaded`` (a tiny model) with fixed templates and a random SPD C."""
    hparams = tiny_hparams(loaded.name.removeprefix("random:"), v_num_grad_steps=steps)
    C = random_spd(key_dim(loaded, hparams.layer), seed=1)
    return run_conformance(
        editor,
        loaded,
        conformance_cases(cases),
        hparams=hparams,
        C=C,
        templates=TEMPLATES,
        expect=expect,
        **options,
    )


def failed(report: ConformReport) -> set[str]:
    return {name for name, p in report.properties().items() if p["passed"] is False}
