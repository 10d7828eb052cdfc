"""Shared set-up of the conformance tests: the public code under test and one harness call."""

from __future__ import annotations

from rome_fast.conform.cases import conformance_cases
from rome_fast.conform.protocol import EditorUnderTest
from rome_fast.conform.run import ConformReport, run_conformance
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
) -> ConformReport:
    """The harness on a fresh tiny model with fixed templates and a random SPD C."""
    loaded = fresh_model(family)
    hparams = tiny_hparams(family, v_num_grad_steps=steps)
    C = random_spd(key_dim(loaded, hparams.layer), seed=1)
    return run_conformance(
        editor,
        loaded,
        conformance_cases(cases),
        hparams=hparams,
        C=C,
        templates=TEMPLATES,
        expect=expect,
    )


def failed(report: ConformReport) -> set[str]:
    return {name for name, p in report.properties().items() if p["passed"] is False}
