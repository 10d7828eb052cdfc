"""The tables of docs/results/batched-conformance.md, printed by
``python -m tests.batched_conformance_report`` (the
harness of tests/batch_conform_setup.py on tiny GPT-2 and tiny Llama, MEMIT at layers 0–1, two
batches of three facts in sequence, with the correct controls and the planted-bug editors of
tests/batch_conform_editors.py) and ``python -m tests.batched_conformance_report alphaedit``
(AlphaEdit's two batches in sequence, per batch: ours, EasyEdit's and the Kₚ bugs)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

from rome_fast.conform.batch_properties import MARGIN, NUMERIC, PRESERVES
from rome_fast.conform.batch_protocol import (
    BatchEditorUnderTest,
    OurBatchEditor,
    shaped_like_public,
)
from rome_fast.conform.batch_run import BatchReport
from rome_fast.conform.properties import Measured
from rome_fast.conform.public_memit import MemitInputs, PublicMemit
from rome_fast.edit.request import EditRequest
from tests.anchors import checkout
from tests.batch_conform_editors import (
    PLANTED,
    ForgetsKp,
    KpByFact,
    KpByFactPastFirst,
    LeakyKp,
    PartialKp,
    plain_memit,
)
from tests.batch_conform_setup import THREE_BATCHES, TWO_BATCHES, conform_batches
from tests.test_batch_conform import ALPHAEDIT

FAMILIES = ("tiny-gpt2", "tiny-llama")
Factory = Callable[[], BatchEditorUnderTest]
COLUMNS = tuple(n for n in NUMERIC if n != PRESERVES)  # MEMIT keeps no Kₚ


def controls(family: str) -> dict[str, Factory]:
    found: dict[str, Factory] = {"rome-verify[memit]": OurBatchEditor, "plain-memit": plain_memit}
    if family == "tiny-gpt2":  # the public code reads config.n_embd
        found["memit (public code)"] = lambda: shaped_like_public(
            PublicMemit(checkout("memit")), MemitInputs
        )
    return found


def _cell(report: BatchReport, name: str) -> str:
    p = report.properties()[name]
    mark = {True: "", False: " **F**", None: " (info)"}[p["passed"]]
    if math.isnan(p.get("floor", math.nan)):
        return f"{p['value']:.2g}{mark}"
    return f"{p['value']:.2g} / {p['floor']:.2g}{mark}"


def rows(family: str) -> tuple[list[str], list[float], list[float]]:
    """Table lines, the controls' worst value/floor, the planted editors' value/floor on the
    property that targets each."""
    lines, correct, planted = [], [], []
    editors: dict[str, tuple[Factory, str | None]] = {
        name: (make, None) for name, make in controls(family).items()
    }
    editors |= {name: (make, caught) for name, (make, caught) in PLANTED.items()}
    for name, (make, caught) in editors.items():
        report = conform_batches(make(), family, expect="memit")
        props = report.properties()
        if caught is None:
            correct += [
                props[n]["value"] / props[n]["floor"] for n in COLUMNS if props[n]["passed"]
            ]
        else:
            planted.append(props[caught]["value"] / props[caught]["floor"])
        cells = " | ".join(_cell(report, n) for n in COLUMNS)
        verdict = ("ok" if report.ok else "FAILS") + f" ({report.verdict})"
        lines.append(f"| {family} | {name} | {verdict} | {cells} |")
    return lines, correct, planted


def table() -> str:
    head = "| family | editor | verdict | " + " | ".join(COLUMNS) + " |"
    lines, correct, planted = [head, "|" + "---|" * (len(COLUMNS) + 3)], [], []
    for family in FAMILIES:
        found = rows(family)
        lines += found[0]
        correct += found[1]
        planted += found[2]
    lines.append("")
    lines.append(
        f"Bound = {MARGIN:g} × floor. Correct controls: at most {max(correct):.2f}× the floor on "
        f"any required property; planted bugs: at least {min(planted):.3g}× the floor on the "
        "property that targets them."
    )
    return "\n".join(lines)


def alphaedit_editors() -> dict[str, tuple[Factory, list[list[EditRequest]]]]:
    """AlphaEdit editors in sequence: (factory, the batches)."""
    from rome_fast.conform.easyedit_batched import EasyEditBatched, EasyEditInputs

    def easyedit(isolate: bool) -> Factory:
        return lambda: shaped_like_public(
            EasyEditBatched("easyedit-alphaedit", checkout("easyedit"), isolate_state=isolate),
            EasyEditInputs,
        )

    two, three = TWO_BATCHES, THREE_BATCHES
    return {
        "rome-verify[k_prompt]": (lambda: OurBatchEditor("k_prompt"), two),
        "easyedit-alphaedit": (easyedit(True), two),
        "forgets-kp": (lambda: ForgetsKp("k_prompt"), two),
        "partial-kp[half]": (lambda: PartialKp("k_prompt", part="half"), two),
        "rome-verify[k_prompt], three batches": (lambda: OurBatchEditor("k_prompt"), three),
        "partial-kp[half], three batches": (lambda: PartialKp("k_prompt", part="half"), three),
        "partial-kp[latest], three batches": (lambda: PartialKp("k_prompt", part="latest"), three),
        "leaky-kp": (LeakyKp, two),
        "kp-by-fact": (lambda: KpByFact("k_prompt"), two),
        "kp-by-fact-past-first, three batches": (lambda: KpByFactPastFirst("k_prompt"), three),
        "easyedit-alphaedit, isolate_state=False": (easyedit(False), two),
    }


ALPHAEDIT_COLUMNS = (
    "residual_memit",
    "residual_k_prompt",
    "matches_reference",
    PRESERVES,
    "order_invariant",
)
EXACT = ("deterministic", "no_trace")


def _case_cell(props: dict[str, Measured], name: str) -> str:
    m = props[name]
    mark = {True: "", False: " **F**", None: " (info)"}[m.passed]
    if math.isnan(m.value):
        return "—"
    if math.isnan(m.floor) or m.floor == 0:
        return f"{m.value:.2g}{mark}"
    return f"{m.value:.2g} ({m.value / m.floor:.2g}×){mark}"


def alphaedit_table() -> str:
    """Per family, editor and batch: value (value/floor) of the properties a Kₚ bug moves."""
    columns = (*ALPHAEDIT_COLUMNS, *EXACT)
    head = "| family | editor | verdict | batch | " + " | ".join(columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 4)]
    for family in FAMILIES:
        for name, (make, batches) in alphaedit_editors().items():
            report = conform_batches(make(), family, ALPHAEDIT, batches=batches)
            verdict = ("ok" if report.ok else "FAILS") + f" ({report.verdict})"
            for i, case in enumerate(report.cases):
                props = {m.name: m for m in case.properties}
                cells = " | ".join(_case_cell(props, c) if c in props else "" for c in columns)
                lines.append(f"| {family} | {name} | {verdict} | {i + 1} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(alphaedit_table() if sys.argv[1:] == ["alphaedit"] else table())
