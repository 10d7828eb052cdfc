"""The conformance run: the same inputs to the editor under test and to our reference, the
weights compared before and after, every property measured per case, and a verdict."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rome_fast.conform.essence import essence_readout
from rome_fast.conform.floors import float64_truth, measured_floors
from rome_fast.conform.invoke import EditorHung, TimeLimit, call_editor
from rome_fast.conform.ours import editor_for
from rome_fast.conform.properties import (
    DESCRIPTIONS,
    MARGINS,
    Identification,
    Measured,
    Observation,
    measure,
)
from rome_fast.conform.protocol import ConformInputs, EditorUnderTest
from rome_fast.conform.state import differences, reset, snapshot
from rome_fast.conform.timeouts import DEFAULT_TIMEOUT
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
        """Per property over all cases (``merge_properties``)."""
        return merge_properties([c.properties for c in self.cases])

    @property
    def ok(self) -> bool:
        """Every required property passes and the verdict is the expected one (without an
        expectation: any ROME variant)."""
        passed = all(p["passed"] is not False for p in self.properties().values())
        if self.expect is None:
            return passed and self.verdict != "other"
        return passed and self.verdict == self.expect

    def to_json(self) -> dict[str, Any]:
        """The report as JSON data; a non-finite number is written as the string "inf",
        "-inf" or "nan" (so the file stays valid JSON: an unmeasured value is "nan", a failed
        edit's misfit "inf")."""
        data: dict[str, Any] = json_safe(
            {
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
                        "properties": measured_json(c.properties),
                    }
                    for c in self.cases
                ],
            }
        )
        return data

    def __str__(self) -> str:
        head = [
            f"editor {self.editor} on {self.model} (layer {self.layer}, seed {self.seed}, "
            f"{len(self.cases)} cases)",
            f"verdict: {self.verdict} — {self.description}"
            + (f" (expected {self.expect})" if self.expect else ""),
        ]
        rows = property_rows(self.properties())
        tail = [f"not controlled: {u}" for u in self.uncontrolled]
        if self.settings.get("stopped"):
            tail.append(str(self.settings["stopped"]))
        if not self.ok:
            tail.append(f"reproduce: {self.reproducer}")
        return "\n".join(head + rows + tail)


def merge_properties(cases: list[list[Measured]]) -> dict[str, dict[str, Any]]:
    """Per property over all cases: passed (False if any case failed it, None if no case
    required it) and the worst case's value, floor, bound and detail (a failed case first,
    then the largest value)."""
    merged: dict[str, dict[str, Any]] = {}
    for properties in cases:
        for m in properties:
            entry = merged.setdefault(m.name, {"passed": None, "value": math.nan})
            if m.passed is not None:
                entry["passed"] = m.passed and entry["passed"] is not False
            if _worse(m, entry):
                entry.update(value=m.value, floor=m.floor, bound=m.bound, detail=m.detail)
                entry["failed_here"] = m.passed is False
            entry.setdefault("detail", m.detail)
    for entry in merged.values():
        entry.pop("failed_here", None)
    return merged


def property_rows(props: dict[str, dict[str, Any]]) -> list[str]:
    """One line per merged property: status, value, floor and bound, detail."""
    width = max(len(n) for n in props)
    rows = []
    for name, p in props.items():
        status = {True: "passed", False: "FAILED", None: "info"}[p["passed"]]
        numbers = f"value {p['value']:<9.3g}"
        if not math.isnan(p.get("bound", math.nan)):
            numbers += f" floor {p['floor']:<9.3g} bound {p['bound']:<9.3g}"
        rows.append(f"  {name:<{width}}  {status:<6}  {numbers:<44}  {p['detail']}")
    return rows


def measured_json(properties: list[Measured]) -> dict[str, dict[str, Any]]:
    """One case's properties as JSON data (before ``json_safe``)."""
    return {
        m.name: {
            "passed": m.passed,
            "value": m.value,
            "floor": m.floor,
            "bound": m.bound,
            "detail": m.detail,
        }
        for m in properties
    }


def _worse(m: Measured, entry: dict[str, Any]) -> bool:
    """Whether case value ``m`` should stand for the property: a failure beats a pass, then
    the larger value (an unmeasured one never replaces a measured one)."""
    if "detail" not in entry:
        return True
    if (m.passed is False) != bool(entry.get("failed_here")):
        return m.passed is False
    return not math.isnan(m.value) and (math.isnan(entry["value"]) or m.value > entry["value"])


def json_safe(data: Any) -> Any:
    """``data`` with every non-finite float as a string ("inf", "-inf", "nan")."""
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {key: json_safe(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [json_safe(value) for value in data]
    return data


def _f64(x: Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


def parameters_of(model: torch.nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def put_back(model: torch.nn.Module, saved: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(saved[n])


def max_diff(model: torch.nn.Module, saved: dict[str, Tensor]) -> float:
    return max(
        float((p.detach().double() - saved[n].double()).abs().max())
        for n, p in model.named_parameters()
    )


@contextmanager
def restored(model: torch.nn.Module) -> Iterator[dict[str, Tensor]]:
    """Yield a copy of every parameter; on exit, write it back (the model leaves as it came)."""
    saved = parameters_of(model)
    try:
        yield saved
    finally:
        put_back(model, saved)


def call_revert(name: str, revert: Callable[[], object]) -> str | None:
    """Call an editor's revert; why it failed, or None."""
    try:
        revert()
    except Exception as error:
        return f"{name}'s revert raised {type(error).__name__}: {error}"
    return None


@dataclass
class Session:
    """One conformance run on one model: the editor, its time limit and the edits kept."""

    editor: EditorUnderTest
    timeout: float | None
    kept: list[dict[str, Tensor]] = field(default_factory=list)  # weights before each kept edit
    limit: TimeLimit = field(init=False)

    def __post_init__(self) -> None:
        self.limit = TimeLimit(self.timeout, "edit")

    @property
    def revert(self) -> Callable[[], object] | None:
        revert = getattr(self.editor, "revert", None)
        return revert if callable(revert) else None

    def edit(self, inputs: ConformInputs) -> tuple[str | None, tuple[str, ...]]:
        """One edit, the model state put back after it: (failure, state left changed)."""
        model = inputs.loaded.model
        state = snapshot(model)
        try:
            failure = call_editor(self.editor, inputs, inputs.site.weight, self.limit)
        finally:
            changes = differences(state, model)
            reset(state, model)
        return failure, changes

    def undo(
        self, before: dict[str, Tensor], model: torch.nn.Module
    ) -> tuple[float | None, str | None]:
        """Revert the latest edit (the editor's revert where offered; always back to
        ``before``): (max difference after the editor's revert, its failure)."""
        diff, failure = None, None
        if self.revert is not None:
            failure = call_revert(self.editor.name, self.revert)
            diff = None if failure else max_diff(model, before)
        put_back(model, before)
        return diff, failure

    def observe(self, inputs: ConformInputs, *, keep: bool) -> Observation:
        """Edit, measure, undo; edit again (determinism) and undo it, or ``keep`` it applied
        (edits in sequence). The weights are compared with our reference on the model as it
        is now (keys, v*, the float64 truth for the floors)."""
        model = inputs.loaded.model
        reference = editor_for(inputs).prepare(inputs.request)
        truth = float64_truth(inputs)
        W = inputs.site.weight
        edited_name = inputs.site.module_name + ".weight"
        before = parameters_of(model)
        W0 = W.detach().clone()  # (d_out, d_in), the parameter may be stored transposed
        failure, changes = self.edit(inputs)
        delta = W.detach().double() - W0.double()
        changed = tuple(
            n
            for n, p in model.named_parameters()
            if n != edited_name and not torch.equal(p, before[n])
        )
        revert_diff, revert_failure = self.undo(before, model)
        failure = failure or revert_failure
        repeat_diff = None
        if failure is None:
            failure, _ = self.edit(inputs)
            repeat_diff = float((W.detach().double() - W0.double() - delta).abs().max())
            if keep and failure is None:
                self.kept.append(before)
            else:
                failure = failure or self.undo(before, model)[1]
        bias = inputs.site.bias
        observed = Observation(
            W0=_f64(W0),
            delta=delta.cpu().numpy(),
            bias=None if bias is None else _f64(bias),
            C=_f64(inputs.C),
            k_star=_f64(reference.keys.k_star),
            k_prompt=_f64(reference.keys.k_prompt),
            v_star=_f64(reference.value.v_star),
            changed_others=changed,
            revert_diff=revert_diff,
            repeat_diff=None if failure or not bool(delta.isfinite().all()) else repeat_diff,
            failure=failure,
            state_changes=changes,
            essence=essence_readout(inputs.loaded, inputs.site, inputs.request),
        )
        if failure is not None or not np.isfinite(observed.delta).all():
            return observed
        return dataclasses.replace(observed, floors=measured_floors(observed, truth))

    def unwind(self, model: torch.nn.Module) -> list[float | None]:
        """Revert the kept edits in reverse order: per edit (in edit order), the max difference
        from the weights before it (None: no revert offered); always restored."""
        diffs: list[float | None] = []
        while self.kept:
            diffs.append(self.undo(self.kept.pop(), model)[0])
        return diffs[::-1]


def _worst(first: float | None, second: float | None) -> float | None:
    if first is None or second is None:
        return first if second is None else second
    return max(first, second)


def run_conformance(  # noqa: PLR0913  keyword-only: the harness settings of `rome conform`
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
    sequential: bool = False,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> ConformReport:
    """Every property of ``editor`` on each request, each edited twice (determinism). With
    ``sequential`` the edits stay applied one after the other (each checked against our
    reference on the weights as they are then), and are reverted in reverse order at the end.
    A hung editor ends the run (its thread may still write); the model leaves as it came."""
    site = loaded.adapter.edited_site(loaded.model, hparams.layer)
    session = Session(editor, timeout)
    observations: list[tuple[EditRequest, Observation]] = []
    stopped = ""
    with restored(loaded.model):
        for request in requests:
            inputs = ConformInputs(loaded, request, site, templates, C, hparams, seed)
            try:
                observations.append((request, session.observe(inputs, keep=sequential)))
            except EditorHung as hung:
                observations.append((request, _hung(site.weight, str(hung))))
                stopped = f"stopped after case {request.case_id}: {hung}"
                break
        if not stopped:
            for i, diff in enumerate(session.unwind(loaded.model)):
                request, obs = observations[i]
                observations[i] = (
                    request,
                    dataclasses.replace(obs, revert_diff=_worst(obs.revert_diff, diff)),
                )
    cases = [CaseReport(request, *measure(obs, expect)) for request, obs in observations]
    return ConformReport(
        editor=editor.name,
        model=loaded.name,
        layer=hparams.layer,
        seed=seed,
        expect=expect,
        cases=cases,
        uncontrolled=list(editor.uncontrolled),
        reproducer=reproducer,
        settings={
            "templates": templates,
            "v_num_grad_steps": hparams.v_star.num_grad_steps,
            "sequential": sequential,
            "timeout": timeout,
            "margins": MARGINS,
            "stopped": stopped,
        },
    )


def _hung(W: Tensor, failure: str) -> Observation:
    """The observation of an edit that never returned: nothing measured."""
    zeros = np.zeros(tuple(W.shape))
    return Observation(
        W0=zeros,
        delta=zeros,
        bias=None,
        C=np.zeros(()),
        k_star=np.zeros(()),
        k_prompt=np.zeros(()),
        v_star=np.zeros(()),
        changed_others=(),
        revert_diff=None,
        repeat_diff=None,
        failure=failure,
    )
