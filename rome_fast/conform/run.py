"""The conformance run: the same inputs to the editor under test and to our reference, the
weights compared before and after, every property measured per case, and a verdict."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rome_fast.conform.ours import editor_for
from rome_fast.conform.properties import (
    DESCRIPTIONS,
    Identification,
    Measured,
    Observation,
    measure,
)
from rome_fast.conform.protocol import ConformInputs, EditorUnderTest
from rome_fast.edit.request import EditRequest
from rome_fast.hparams.defaults import HParams
from rome_fast.model.loader import LoadedModel


@dataclass(frozen=True)
class CaseReport:
    request: EditRequest
    identification: Identification
    properties: list[Measured]


@dataclass(frozen=True)
class ConformReport:
    editor: str
    model: str
    layer: int
    seed: int
    expect: str | None
    cases: list[CaseReport]
    uncontrolled: list[str]
    reproducer: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        verdicts = {c.identification.variant for c in self.cases}
        return verdicts.pop() if len(verdicts) == 1 else "other"

    @property
    def description(self) -> str:
        if self.verdict != "other":
            return DESCRIPTIONS[self.verdict]
        return "; ".join(
            f"case {c.request.case_id}: {c.identification.describe()}" for c in self.cases
        )

    def properties(self) -> dict[str, dict[str, Any]]:
        """Per property over all cases: passed (None if never required), worst value."""
        merged: dict[str, dict[str, Any]] = {}
        for case in self.cases:
            for m in case.properties:
                entry = merged.setdefault(m.name, {"passed": None, "value": None, "detail": ""})
                if m.passed is not None:
                    entry["passed"] = m.passed and entry["passed"] is not False
                if not np.isnan(m.value) and (entry["value"] is None or m.value > entry["value"]):
                    entry["value"], entry["detail"] = m.value, m.detail
                elif not entry["detail"]:
                    entry["detail"] = m.detail
        return merged

    @property
    def ok(self) -> bool:
        """Every required property passes and the verdict is the expected one (without an
        expectation: any ROME variant)."""
        passed = all(p["passed"] is not False for p in self.properties().values())
        if self.expect is None:
            return passed and self.verdict != "other"
        return passed and self.verdict == self.expect

    def to_json(self) -> dict[str, Any]:
        return {
            "editor": self.editor,
            "model": self.model,
            "layer": self.layer,
            "seed": self.seed,
            "expect": self.expect,
            "verdict": self.verdict,
            "description": self.description,
            "ok": self.ok,
            "properties": self.properties(),
            "uncontrolled": self.uncontrolled,
            "reproducer": self.reproducer,
            "settings": self.settings,
            "cases": [
                {
                    "request": asdict(c.request),
                    "verdict": c.identification.variant,
                    "description": c.identification.describe(),
                    "properties": {
                        m.name: {
                            "passed": m.passed,
                            "value": None if np.isnan(m.value) else m.value,
                            "detail": m.detail,
                        }
                        for m in c.properties
                    },
                }
                for c in self.cases
            ],
        }

    def __str__(self) -> str:
        head = [
            f"editor {self.editor} on {self.model} (layer {self.layer}, seed {self.seed}, "
            f"{len(self.cases)} cases)",
            f"verdict: {self.verdict} — {self.description}"
            + (f" (expected {self.expect})" if self.expect else ""),
        ]
        props = self.properties()
        width = max(len(n) for n in props)
        rows = []
        for name, p in props.items():
            status = {True: "passed", False: "FAILED", None: "info"}[p["passed"]]
            rows.append(f"  {name:<{width}}  {status:<6}  {p['detail']}")
        tail = [f"not controlled: {u}" for u in self.uncontrolled]
        if not self.ok:
            tail.append(f"reproduce: {self.reproducer}")
        return "\n".join(head + rows + tail)


def _f64(x: Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


@contextmanager
def restored(model: torch.nn.Module) -> Iterator[dict[str, Tensor]]:
    """Yield a copy of every parameter; on exit, write it back (the model leaves as it came)."""
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    try:
        yield saved
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(saved[n])


class EditorFailed(RuntimeError):
    """The editor under test raised; the model was restored. Its verdict: nonconforming."""


def _where(error: BaseException) -> str:
    """The innermost line of the editor's own code (not of an installed library)."""
    frames = [
        f for f in traceback.extract_tb(error.__traceback__) if "site-packages" not in f.filename
    ]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def edit_in_place(editor: EditorUnderTest, inputs: ConformInputs, W: Tensor) -> None:
    """Run the editor; a returned ΔW (d_out, d_in) is added to the edited weight."""
    try:
        delta = editor.edit(inputs)
    except Exception as error:
        raise EditorFailed(
            f"{editor.name} raised {type(error).__name__}: {error}{_where(error)} on "
            f"{inputs.loaded.name} for {inputs.request.subject!r}"
        ) from error
    if delta is not None:
        if tuple(delta.shape) != tuple(W.shape):
            raise ValueError(
                f"{editor.name} returned ΔW of shape {tuple(delta.shape)}; the edited weight is "
                f"(d_out, d_in) = {tuple(W.shape)}"
            )
        with torch.no_grad():
            W.add_(delta.to(W.device, W.dtype))


def observe(editor: EditorUnderTest, inputs: ConformInputs, *, repeat: bool) -> Observation:
    """Edit once (and again if ``repeat``), measure, and leave the model as it was."""
    loaded = inputs.loaded
    reference = editor_for(inputs).prepare(inputs.request)
    W = inputs.site.weight
    edited_name = inputs.site.module_name + ".weight"
    with restored(loaded.model) as before:
        W0 = W.detach().clone()
        edit_in_place(editor, inputs, W)
        delta = W.detach().double() - W0.double()
        changed = tuple(
            n
            for n, p in loaded.model.named_parameters()
            if n != edited_name and not torch.equal(p, before[n])
        )
        revert_diff = None
        revert = getattr(editor, "revert", None)
        if callable(revert):
            revert()
            revert_diff = max(
                float((p.detach().double() - before[n].double()).abs().max())
                for n, p in loaded.model.named_parameters()
            )
    repeat_diff = None
    if repeat:
        with restored(loaded.model):
            edit_in_place(editor, inputs, W)
            again = W.detach().double() - W0.double()
            repeat_diff = float((again - delta).abs().max())
    bias = inputs.site.bias
    return Observation(
        W0=_f64(W0),
        delta=delta.cpu().numpy(),
        bias=None if bias is None else _f64(bias),
        C=_f64(inputs.C),
        k_star=_f64(reference.keys.k_star),
        k_prompt=_f64(reference.keys.k_prompt),
        v_star=_f64(reference.value.v_star),
        changed_others=changed,
        revert_diff=revert_diff,
        repeat_diff=repeat_diff,
    )


def run_conformance(
    editor: EditorUnderTest,
    loaded: LoadedModel,
    requests: list[EditRequest],
    *,
    hparams: HParams,
    C: Tensor,
    templates: list[str],
    seed: int = 0,
    expect: str | None = None,
    reproducer: str = "",
) -> ConformReport:
    """Every property of ``editor`` on each request (the first one also edited twice)."""
    cases = []
    site = loaded.adapter.edited_site(loaded.model, hparams.layer)
    for i, request in enumerate(requests):
        inputs = ConformInputs(loaded, request, site, templates, C, hparams, seed)
        ident, props = measure(observe(editor, inputs, repeat=i == 0), expect)
        cases.append(CaseReport(request, ident, props))
    return ConformReport(
        editor=editor.name,
        model=loaded.name,
        layer=hparams.layer,
        seed=seed,
        expect=expect,
        cases=cases,
        uncontrolled=list(editor.uncontrolled),
        reproducer=reproducer,
        settings={"templates": templates, "v_num_grad_steps": hparams.v_star.num_grad_steps},
    )
