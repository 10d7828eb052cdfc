"""The batched conformance run: each batch given to the editor under test and to our float64
reference on the same inputs, the weights compared before and after, every batched property
measured per batch (``batch_properties``), and a verdict naming the method and key choice.

Per batch: the reference and the floors on the weights as they are; the editor's edit (in a
thread with a time limit, the model's state put back after it); its revert; the batch in
reverse order (order invariance); the batch again (determinism), kept applied in a sequential
run, else undone. A sequential run's batches are reverted in reverse order at the end. Then
every batch that completed is written once more (``no_trace``: every write of the run undone,
each must write what it wrote first): a sequential run's kept one after the other again, as
the first time, then reverted in reverse order; else each on the original weights and undone.

AlphaEdit keeps the keys of earlier edits (Kₚ) itself: in a sequential run batch i is checked
against the reference with Kₚ = the keys of batches 1..i−1 at each layer (each key choice's
reference its own keys; the floor our editor's, ``batch_floors``), outside one as a first edit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rome_fast.conform.batch_floors import (
    OurEarlier,
    layer_deltas,
    layer_weights,
    measured_floors,
    order_difference,
)
from rome_fast.conform.batch_properties import (
    KEY_DESCRIPTIONS,
    MARGIN,
    BatchObservation,
    measure,
    no_trace,
    trace_failed,
)
from rome_fast.conform.batch_protocol import BatchEditorUnderTest, BatchInputs, method_of
from rome_fast.conform.batch_reference import F64, EarlierKeys, Reference, references
from rome_fast.conform.invoke import EditorHung, describe_raise, run_timed, seconds
from rome_fast.conform.properties import Measured
from rome_fast.conform.run import (
    call_revert,
    json_safe,
    max_diff,
    measured_json,
    merge_properties,
    parameters_of,
    property_rows,
    put_back,
    restored,
)
from rome_fast.conform.state import differences, reset, snapshot
from rome_fast.edit.batch_keys import KEY_CHOICES, KeyChoice
from rome_fast.edit.request import EditRequest
from rome_fast.hparams.batched import MethodHParams
from rome_fast.hparams.defaults import HParams
from rome_fast.model.loader import LoadedModel

ALPHAEDIT_KP = (
    "AlphaEdit's Kₚ: the editor's own, not handed in; each batch is checked against the "
    "reference with the keys of the batches kept before it as Kₚ (none outside --sequential)"
)


@dataclass(frozen=True)
class BatchCase:
    requests: list[EditRequest]
    key: KeyChoice | None  # the key choice identified (None: none)
    properties: list[Measured]


@dataclass(frozen=True)
class BatchReport:
    editor: str
    model: str
    method: str
    layers: tuple[int, ...]
    seed: int
    expect: KeyChoice | None
    cases: list[BatchCase]
    uncontrolled: list[str]
    reproducer: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """The key choice every batch was written at, or "other"."""
        keys = {c.key for c in self.cases}
        key = keys.pop() if len(keys) == 1 else None
        return key or "other"

    @property
    def description(self) -> str:
        if self.verdict == "other":
            found = ", ".join(str(c.key or "none") for c in self.cases)
            return f"{self.method}: no single key choice (per batch: {found})"
        return f"{self.method}: {KEY_DESCRIPTIONS[self.verdict]}"

    def properties(self) -> dict[str, dict[str, Any]]:
        return merge_properties([c.properties for c in self.cases])

    @property
    def ok(self) -> bool:
        """Every required property passes and the batches were written at the expected key
        choice (without an expectation: at one key choice)."""
        passed = all(p["passed"] is not False for p in self.properties().values())
        wanted = self.verdict == self.expect if self.expect else self.verdict != "other"
        return passed and wanted

    def to_json(self) -> dict[str, Any]:
        """As ``ConformReport.to_json``: non-finite numbers written as strings."""
        data: dict[str, Any] = json_safe(
            {
                "editor": self.editor,
                "model": self.model,
                "method": self.method,
                "layers": list(self.layers),
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
                        "requests": [asdict(r) for r in c.requests],
                        "verdict": c.key or "other",
                        "properties": measured_json(c.properties),
                    }
                    for c in self.cases
                ],
            }
        )
        return data

    def __str__(self) -> str:
        head = [
            f"editor {self.editor} on {self.model} ({self.method}, layers "
            f"{list(self.layers)}, seed {self.seed}, {len(self.cases)} batches of "
            f"{len(self.cases[0].requests)})",
            f"verdict: {self.verdict} — {self.description}"
            + (f" (expected {self.expect})" if self.expect else ""),
        ]
        tail = [f"not controlled: {u}" for u in self.uncontrolled]
        if self.settings.get("stopped"):
            tail.append(str(self.settings["stopped"]))
        if not self.ok:
            tail.append(f"reproduce: {self.reproducer}")
        return "\n".join(head + property_rows(self.properties()) + tail)


@dataclass
class KeptKeys:
    """AlphaEdit's earlier edits in a sequential run: per key choice, the reference's keys per
    layer and our floor editor's edit of each batch kept so far."""

    reference: dict[KeyChoice, list[dict[int, F64]]] = field(default_factory=dict)
    ours: OurEarlier = field(default_factory=dict)

    def keep(self, refs: dict[KeyChoice, Reference], ours: OurEarlier) -> None:
        for choice in KEY_CHOICES:
            self.reference.setdefault(choice, []).append(refs[choice].keys)
            self.ours.setdefault(choice, []).extend(ours.get(choice, []))

    def earlier(self) -> EarlierKeys:
        """Kₚ per key choice and layer: the kept batches' keys side by side (d_in, m)."""
        return {
            choice: {layer: np.concatenate([k[layer] for k in kept], axis=1) for layer in kept[0]}
            for choice, kept in self.reference.items()
            if kept
        }


@dataclass
class BatchSession:
    """One batched conformance run: the editor, its time limit and the batches kept."""

    editor: BatchEditorUnderTest
    timeout: float | None
    remembers: bool = False  # AlphaEdit: the kept batches' keys are Kₚ of the later ones
    kept: list[dict[str, Tensor]] = field(default_factory=list)  # weights before each kept batch
    kept_keys: KeptKeys = field(default_factory=KeptKeys)

    def edit(self, inputs: BatchInputs) -> tuple[str | None, tuple[str, ...]]:
        """One batch, the model state put back after it: (failure, state left changed)."""
        model, name = inputs.loaded.model, self.editor.name
        where = f"{inputs.loaded.name} for a batch of {len(inputs.requests)}"
        state = snapshot(model)
        failure = None
        try:
            hung = f"{name} did not return within {seconds(self.timeout)} s on {where}"
            run_timed(lambda: self.editor.edit(inputs), f"editor {name}", self.timeout, hung)
        except EditorHung:
            raise
        except Exception as error:
            failure = describe_raise(name, error, where)
        finally:
            changes = differences(state, model)
            reset(state, model)
        return failure, changes

    def undo(
        self, before: dict[str, Tensor], model: torch.nn.Module
    ) -> tuple[float | None, str | None]:
        """Revert the latest batch (the editor's revert where offered; always back to
        ``before``): (max difference after the editor's revert, its failure)."""
        revert = getattr(self.editor, "revert", None)
        diff, failure = None, None
        if callable(revert):
            failure = call_revert(self.editor.name, revert)
            diff = None if failure else max_diff(model, before)
        put_back(model, before)
        return diff, failure

    def rewrite(
        self, inputs: BatchInputs, W0: dict[int, Tensor]
    ) -> tuple[str | None, dict[int, F64]]:
        """The batch written again from the same weights: (failure, ΔW per layer)."""
        failure, _ = self.edit(inputs)
        return failure, layer_deltas(inputs.loaded, W0)

    def observe(self, inputs: BatchInputs, *, keep: bool) -> BatchObservation:
        """The reference and floors on the weights as they are; the batch, its revert, the
        batch reversed, the batch again (kept applied with ``keep``, else undone)."""
        model = inputs.loaded.model
        refs = references(inputs, self.kept_keys.earlier())
        floors, ours = measured_floors(inputs, refs, self.kept_keys.ours)
        edited = {
            inputs.loaded.adapter.edited_site(model, layer).module_name + ".weight"
            for layer in inputs.method.layers
        }
        before = parameters_of(model)
        W0 = layer_weights(inputs.loaded, inputs.method.layers)
        failure, changes = self.edit(inputs)
        deltas = layer_deltas(inputs.loaded, W0)
        changed = tuple(
            n
            for n, p in model.named_parameters()
            if n not in edited and not torch.equal(p, before[n])
        )
        revert_diff, revert_failure = self.undo(before, model)
        failure = failure or revert_failure
        order_diff = repeat_diff = None
        if failure is None:
            reversed_inputs = _reversed(inputs)
            failure, backward = self.rewrite(reversed_inputs, W0)
            order_diff = None if failure else order_difference(deltas, backward)
            failure = failure or self.undo(before, model)[1]
        if failure is None:
            failure, again = self.rewrite(inputs, W0)
            repeat_diff = _max_layer_diff(again, deltas)
            if keep and failure is None:
                self.kept.append(before)
                if self.remembers:
                    self.kept_keys.keep(refs, {c: [r] for c, r in ours.items()})
            else:
                failure = failure or self.undo(before, model)[1]
        return BatchObservation(
            n_facts=len(inputs.requests),
            deltas=deltas,
            references=refs,
            changed_others=changed,
            revert_diff=revert_diff,
            repeat_diff=None if failure else repeat_diff,
            order_diff=order_diff,
            failure=failure,
            state_changes=changes,
            floors=floors,
        )

    def unwind(self, model: torch.nn.Module) -> list[tuple[float | None, str | None]]:
        """Revert the kept batches in reverse order: per batch (in edit order), the max
        difference from the weights before it (None: no revert offered, or it failed) and the
        revert's failure; always restored."""
        undone: list[tuple[float | None, str | None]] = []
        while self.kept:
            undone.append(self.undo(self.kept.pop(), model))
        return undone[::-1]

    def replay(
        self,
        model: torch.nn.Module,
        written: list[tuple[BatchInputs, dict[int, F64]]],
        *,
        keep: bool,
    ) -> list[Measured]:
        """``no_trace`` of each batch of ``written`` (its inputs and the ΔW it wrote first),
        written again from the weights as they are (the original ones, every write undone):
        with ``keep`` each kept applied for the next, as in the sequence, and all reverted in
        reverse order at the end; else each undone before the next. A failed or hung write
        ends the replay (the batches after it are not measured)."""
        found: list[Measured] = []
        kept: list[dict[str, Tensor]] = []  # weights before each batch kept applied
        for inputs, first in written:
            before = parameters_of(model)
            W0 = layer_weights(inputs.loaded, inputs.method.layers)
            try:
                failure, again = self.rewrite(inputs, W0)
            except EditorHung as hung:  # not called again: the weights put back as they came
                put_back(model, kept[0] if kept else before)
                return _padded([*found, trace_failed(str(hung))], len(written))
            if failure is not None:
                put_back(model, before)
                found.append(trace_failed(failure))
                break
            found.append(no_trace(_max_layer_diff(again, first), ""))
            kept.append(before)
            if not keep:
                self.undo(kept.pop(), model)
        while kept:
            self.undo(kept.pop(), model)
        return _padded(found, len(written))


def _max_layer_diff(again: dict[int, F64], first: dict[int, F64]) -> float:
    """max |ΔW' − ΔW| over the edited layers."""
    return max(float(abs(again[layer] - first[layer]).max()) for layer in first)


def _padded(found: list[Measured], n: int) -> list[Measured]:
    """``found`` and, up to ``n``, the batches a failed replay did not reach."""
    absent = no_trace(None, "not measured: an earlier batch failed when written again")
    return found + [absent] * (n - len(found))


def _reversed(inputs: BatchInputs) -> BatchInputs:
    return replace(inputs, requests=list(inputs.requests)[::-1])


@dataclass(frozen=True)
class BatchSettings:
    """What the harness controls in a batched run, besides the editor and the batches."""

    hparams: HParams  # the target optimization's settings
    method: MethodHParams  # layers and the method's weights
    C: dict[int, Tensor]  # per edited layer (d_in, d_in)
    templates: list[str]
    seed: int = 0


def run_batch_conformance(
    editor: BatchEditorUnderTest,
    loaded: LoadedModel,
    batches: list[list[EditRequest]],
    settings: BatchSettings,
    *,
    expect: KeyChoice | None = None,
    reproducer: str = "",
    sequential: bool = False,
    timeout: float | None = None,
) -> BatchReport:
    """Every batched property of ``editor`` on each batch. With ``sequential`` the batches stay
    applied one after the other, each checked against the reference on the weights as they are
    then (AlphaEdit's with the earlier batches' keys as Kₚ), and are reverted in reverse order
    at the end. Then ``no_trace`` of every completed batch (``BatchSession.replay``: the
    sequence written again, else each batch alone). A hung editor ends the run; the model
    leaves as it came."""
    method = method_of(settings.method)
    keep = sequential
    session = BatchSession(editor, timeout, remembers=method == "alphaedit")
    observations: list[tuple[list[EditRequest], BatchObservation]] = []
    stopped = ""

    def inputs_of(batch: list[EditRequest]) -> BatchInputs:
        return BatchInputs(
            loaded,
            batch,
            settings.templates,
            settings.C,
            settings.hparams,
            settings.method,
            settings.seed,
        )

    traces: dict[int, Measured] = {}  # per completed batch; the others not measured
    with restored(loaded.model):
        for batch in batches:
            inputs = inputs_of(batch)
            try:
                observations.append((batch, session.observe(inputs, keep=keep)))
            except EditorHung as hung:
                observations.append((batch, _hung(settings.method.layers, str(hung))))
                stopped = f"stopped at a batch starting with case {batch[0].case_id}: {hung}"
                break
        if not stopped:
            # in a sequential run the kept batches: each completed batch stays applied
            completed = [i for i, (_, obs) in enumerate(observations) if obs.failure is None]
            undone = session.unwind(loaded.model)
            for i, (diff, failure) in zip(completed if keep else [], undone, strict=True):
                batch, obs = observations[i]
                worst = obs.revert_diff if diff is None else max(diff, obs.revert_diff or 0.0)
                # a revert that fails while the sequence unwinds fails its batch, as in observe
                observations[i] = (
                    batch,
                    replace(obs, revert_diff=worst, failure=obs.failure or failure),
                )
            firsts = [observations[i] for i in completed]
            written = [(inputs_of(batch), obs.deltas) for batch, obs in firsts]
            traces = dict(
                zip(completed, session.replay(loaded.model, written, keep=keep), strict=True)
            )
    absent = "not measured: " + ("the run stopped" if stopped else "the batch did not complete")
    cases = []
    for i, (batch, obs) in enumerate(observations):
        key, found = measure(obs, expect)
        cases.append(BatchCase(batch, key, [*found, traces.get(i, no_trace(None, absent))]))
    uncontrolled = list(editor.uncontrolled) + ([ALPHAEDIT_KP] if method == "alphaedit" else [])
    return BatchReport(
        editor=editor.name,
        model=loaded.name,
        method=method,
        layers=settings.method.layers,
        seed=settings.seed,
        expect=expect,
        cases=cases,
        uncontrolled=uncontrolled,
        reproducer=reproducer,
        settings={
            "templates": settings.templates,
            "method_hparams": asdict(settings.method),
            "v_num_grad_steps": settings.hparams.v_star.num_grad_steps,
            "sequential": keep,
            "timeout": timeout,
            "margin": MARGIN,
            "stopped": stopped,
        },
    )


def _hung(layers: tuple[int, ...], failure: str) -> BatchObservation:
    """The observation of a batch that never returned: nothing measured."""
    return BatchObservation(
        n_facts=0,
        deltas={layer: torch.zeros(1, 1, dtype=torch.float64).numpy() for layer in layers},
        references={},
        changed_others=(),
        revert_diff=None,
        repeat_diff=None,
        order_diff=None,
        failure=failure,
    )
