"""Batched editors for the batched conformance tests, as ``module:callable`` editors a user could
write (``--editor tests.batch_conform_editors:NAME --batch N``): ``plain_memit``, a correct MEMIT
written plainly here (the closed form ``ΔW = R Kᵀ (λC + KKᵀ)⁻¹`` by a dense float64 solve, the
schedule as a loop; only the keys and the targets' optimization are the package's steps), and
planted bugs, each that editor with one thing wrong; and AlphaEdit's memory of earlier edits
(Kₚ) gone wrong around our editor: never kept (``forgets_kp``), kept in part (``PartialKp``),
kept past a revert in a module-level editor (``leaky_kp``), or kept per fact in a module-level
cache (``kp_by_fact``; read only over another batch, ``kp_by_fact_past_first``)."""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from rome_fast.conform.batch_protocol import BatchInputs, OurBatchEditor, our_batch_editor_for
from rome_fast.conform.run import parameters_of, put_back
from rome_fast.edit.batch import hidden_at_subjects
from rome_fast.edit.batch_keys import compute_batch_keys, key_matrix
from rome_fast.edit.batch_result import BatchResult
from rome_fast.edit.batch_targets import compute_batch_targets
from rome_fast.methods.memit.update import MemitHParams

SEED = 0  # the extra rank-one term's random directions
HANG_SECONDS = 10.0  # how long ``hangs`` waits: far past the 0.5 s limit its test sets
Fault = Callable[[Tensor], Tensor]  # what a planted bug does to a layer's ΔW (d_out, d_in)


def _keys(inputs: BatchInputs, layer: int) -> Tensor:
    """The public keys K (d_in, n) at ``layer`` on the current weights."""
    site = inputs.loaded.adapter.edited_site(inputs.loaded.model, layer)
    found = compute_batch_keys(inputs.loaded, site, inputs.requests, inputs.templates)
    return key_matrix(found, inputs.templates, "memit")


def _solve(C: Tensor, K: Tensor, R: Tensor, lam: float) -> Tensor:
    """``R Kᵀ (λC + KKᵀ)⁻¹`` (d_out, d_in) by a dense float64 solve of the transposed system."""
    K64, R64 = K.double(), R.double()
    A = lam * C.double() + K64 @ K64.T  # (d_in, d_in), symmetric
    delta: Tensor = torch.linalg.solve(A, K64 @ R64.T).T
    return delta


@dataclass
class PlainMemit:
    """MEMIT over ``inputs.method.layers``; each knob plants one bug (all off: correct)."""

    name: str = "plain-memit"
    spread: bool = True  # False: every layer writes the whole residual Z − H
    keys_from_first_layer: bool = False  # every layer's keys read at the first edited layer
    fault: Fault = field(default=lambda delta: delta)
    stale_weights: bool = False  # W0 cached at the first call and written over afterwards
    first_fact_weight: float = 1.0  # ≠ 1: the first request's residual scaled (order-dependent)
    uncontrolled: list[str] = field(default_factory=list)
    _cached: dict[int, Tensor] = field(default_factory=dict, repr=False)

    def edit(self, inputs: BatchInputs) -> None:
        hp = inputs.method
        assert isinstance(hp, MemitHParams), "plain-memit runs MEMIT only"
        loaded, layers = inputs.loaded, hp.layers
        Z = compute_batch_targets(
            loaded, layers[-1], inputs.requests, inputs.templates, inputs.hparams.v_star
        ).targets  # (d, n)
        for i, layer in enumerate(layers):
            K = _keys(inputs, layers[0] if self.keys_from_first_layer else layer)
            R = Z - hidden_at_subjects(loaded, layers[-1], inputs.requests)
            if self.spread:
                R = R / (len(layers) - i)
            R[:, 0] *= self.first_fact_weight
            delta = self.fault(_solve(inputs.C[layer], K, R, hp.mom2_update_weight))
            self._write(inputs, layer, delta)

    def _write(self, inputs: BatchInputs, layer: int, delta: Tensor) -> None:
        W = inputs.loaded.adapter.edited_site(inputs.loaded.model, layer).weight
        base = self._cached.setdefault(layer, W.detach().clone()) if self.stale_weights else W
        with torch.no_grad():
            W.copy_((base.double() + delta).to(W.dtype))


def plain_memit() -> PlainMemit:
    return PlainMemit()


def residual_not_spread() -> PlainMemit:
    return PlainMemit("residual-not-spread", spread=False)


def wrong_layer_keys() -> PlainMemit:
    return PlainMemit("wrong-layer-keys", keys_from_first_layer=True)


def stale_weights() -> PlainMemit:
    return PlainMemit("stale-w0", stale_weights=True)


def scaled_update() -> PlainMemit:
    return PlainMemit("scaled-0.995", fault=lambda delta: 0.995 * delta)


def bf16_update() -> PlainMemit:
    return PlainMemit("bf16-update", fault=lambda delta: delta.bfloat16().double())


def _plus_rank_one(delta: Tensor) -> Tensor:
    """ΔW plus a seeded random rank-one term at 1e-4 of ‖ΔW‖ (beyond the n facts' span)."""
    g = torch.Generator().manual_seed(SEED)
    u = torch.randn(delta.shape[0], 1, generator=g, dtype=delta.dtype)
    v = torch.randn(1, delta.shape[1], generator=g, dtype=delta.dtype)
    term = u @ v  # (d_out, d_in)
    scaled: Tensor = 1e-4 * delta.norm() / term.norm() * term
    return delta + scaled


def extra_rank() -> PlainMemit:
    return PlainMemit("extra-rank", fault=_plus_rank_one)


def first_fact_favoured() -> PlainMemit:
    return PlainMemit("first-fact-favoured", first_fact_weight=1.01)


PLANTED: dict[str, tuple[Callable[[], PlainMemit], str]] = {
    # editor -> (its factory, the property that targets it)
    "residual-not-spread": (residual_not_spread, "matches_reference"),
    "wrong-layer-keys": (wrong_layer_keys, "matches_reference"),
    "stale-w0": (stale_weights, "matches_reference"),
    "scaled-0.995": (scaled_update, "matches_reference"),
    "bf16-update": (bf16_update, "matches_reference"),
    "first-fact-favoured": (first_fact_favoured, "order_invariant"),
    "extra-rank": (extra_rank, "rank_per_layer"),
}


def raises_midway(inputs: BatchInputs) -> None:
    """Writes the batch, then raises (the harness must put the model back)."""
    PlainMemit().edit(inputs)
    raise RuntimeError("planted failure after the first write")


def training_mode(inputs: BatchInputs) -> None:
    """A correct batch that leaves the model in training mode."""
    PlainMemit().edit(inputs)
    inputs.loaded.model.train()


def hangs(_inputs: BatchInputs) -> None:
    """Never returns within the tests' time limit (and writes nothing)."""
    threading.Event().wait(HANG_SECONDS)


def touches_embedding(inputs: BatchInputs) -> None:
    """A correct batch that also nudges a parameter outside the edited layers."""
    PlainMemit().edit(inputs)
    first = next(inputs.loaded.model.parameters())
    with torch.no_grad():
        first.view(-1)[0] += 1e-3


# for `rome conform --editor tests.batch_conform_editors:scaled` (one process, one instance)
scaled = scaled_update()


@dataclass
class ForgetsKp(OurBatchEditor):
    """Ours with a fresh editor for every batch: AlphaEdit's Kₚ never holds the batches kept
    before (each solved as a first edit), as the harness's ours did before issue 23."""

    @property
    def name(self) -> str:
        return "forgets-kp"

    def edit(self, inputs: BatchInputs) -> None:
        editor = our_batch_editor_for(inputs)
        result = editor.edit_batch(
            inputs.requests, inputs.method_name, keys=self.keys, method_hparams=inputs.method
        )
        self._applied.append((editor, result))


@dataclass
class PartialKp(OurBatchEditor):
    """Ours with AlphaEdit's Kₚ holding part of the batches applied before: every other key of
    each (``part="half"``), or the latest batch's alone (``part="latest"``)."""

    part: Literal["half", "latest"] = "half"

    @property
    def name(self) -> str:
        return f"partial-kp[{self.part}]"

    def edit(self, inputs: BatchInputs) -> None:
        applied = [result for _, result in self._applied]
        earlier = (
            applied[-1:]
            if self.part == "latest"
            else [dataclasses.replace(r, keys=tuple(K[:, ::2] for K in r.keys)) for r in applied]
        )
        editor = our_batch_editor_for(inputs, earlier)
        result = editor.edit_batch(
            inputs.requests, inputs.method_name, keys=self.keys, method_hparams=inputs.method
        )
        self._applied.append((editor, result))


# one editor per model for the life of the process (a module-level cache, as AlphaEdit_main.py's
# cache_c): its log, and so its Kₚ, keeps every batch it wrote
_EDITORS: weakref.WeakKeyDictionary[nn.Module, OurBatchEditor] = weakref.WeakKeyDictionary()


@dataclass
class LeakyKp:
    """Ours through a module-level editor per model whose revert writes the weights back but
    leaves the batch in the editor's log: Kₚ keeps the keys of every batch ever written."""

    name: str = "leaky-kp"
    uncontrolled: list[str] = field(default_factory=list)
    _before: list[tuple[nn.Module, dict[str, Tensor]]] = field(default_factory=list)

    def edit(self, inputs: BatchInputs) -> None:
        model = inputs.loaded.model
        kept = _EDITORS.setdefault(model, OurBatchEditor("memit"))
        self._before.append((model, parameters_of(model)))
        editor = kept._applied[-1][0] if kept._applied else our_batch_editor_for(inputs)
        result = editor.edit_batch(
            inputs.requests, inputs.method_name, keys="memit", method_hparams=inputs.method
        )
        kept._applied.append((editor, result))  # never popped

    def revert(self) -> None:
        put_back(*self._before.pop())


# per model, per fact: the batch it was last written in and its column there
_FACT_KEYS: weakref.WeakKeyDictionary[nn.Module, dict[object, tuple[BatchResult, int]]] = (
    weakref.WeakKeyDictionary()
)


@dataclass
class KpByFact(OurBatchEditor):
    """Ours with Kₚ from a module-level cache of every fact ever written, keyed by fact: a fact
    written again replaces its entry (so the batch written twice writes the same ΔW), and a
    revert removes nothing (so another batch's facts stay in Kₚ)."""

    @property
    def name(self) -> str:
        return "kp-by-fact"

    def edit(self, inputs: BatchInputs) -> None:
        cache = _FACT_KEYS.setdefault(inputs.loaded.model, {})
        facts = [r.case_id if r.case_id is not None else r.subject for r in inputs.requests]
        editor = our_batch_editor_for(inputs, self._earlier(cache, facts))
        result = editor.edit_batch(
            inputs.requests, inputs.method_name, keys=self.keys, method_hparams=inputs.method
        )
        cache.update({fact: (result, i) for i, fact in enumerate(facts)})
        self._applied.append((editor, result))

    def _earlier(
        self, cache: dict[object, tuple[BatchResult, int]], facts: Sequence[object]
    ) -> list[BatchResult]:
        """Every cached fact but ``facts``, as the batches it was written in (its columns)."""
        columns: dict[int, tuple[BatchResult, list[int]]] = {}
        for fact, (written, column) in cache.items():
            if fact not in facts:
                columns.setdefault(id(written), (written, []))[1].append(column)
        return [
            dataclasses.replace(written, keys=tuple(K[:, cols] for K in written.keys))
            for written, cols in columns.values()
        ]


@dataclass
class KpByFactPastFirst(KpByFact):
    """``kp-by-fact`` for a batch written over another only: a first batch (none applied) is
    solved as a first edit, as it must be, so it is written again clean after any run; a later
    batch reads the cache and, written again after the run, finds there the facts of a batch
    written after it and undone: the trace bends the second batch of a sequence of three on."""

    @property
    def name(self) -> str:
        return "kp-by-fact-past-first"

    def _earlier(
        self, cache: dict[object, tuple[BatchResult, int]], facts: Sequence[object]
    ) -> list[BatchResult]:
        return super()._earlier(cache, facts) if self._applied else []


# for `rome conform --editor tests.batch_conform_editors:leaky --method alphaedit`
leaky = LeakyKp()


@dataclass
class OneDeepRevert(PlainMemit):
    """A correct MEMIT whose ``revert`` undoes only the latest batch (it keeps one copy of the
    weights before, as the original MEMIT code's ``return_orig_weights`` gives one): a
    sequence of two cannot be unwound."""

    name: str = "one-deep-revert"
    _before: dict[str, Tensor] | None = field(default=None, repr=False)
    _model: nn.Module | None = field(default=None, repr=False)

    def edit(self, inputs: BatchInputs) -> None:
        self._model = inputs.loaded.model
        self._before = parameters_of(self._model)
        super().edit(inputs)

    def revert(self) -> None:
        if self._before is None or self._model is None:
            raise RuntimeError("nothing to revert: only the latest edit is kept")
        put_back(self._model, self._before)
        self._before = None
