"""Planted-bug editors for the conformance tests: each breaks one property on purpose, as a
``module:callable`` editor a user could write (``--editor tests.conform_editors:NAME``), and an
independently written correct r-ROME control (``naive_r_rome``)."""

from __future__ import annotations

import dataclasses
import threading
import time

import torch
from torch import Tensor

from rome_fast.conform.ours import OurEditor, editor_for
from rome_fast.conform.protocol import ConformInputs
from rome_fast.edit.naive import NaiveEditor
from rome_fast.methods.rome.update import RankOne, UpdateInputs, rank_one_update
from rome_fast.model.weights import apply_factors, weight_matrix

SEED = 0  # the rank-two term's random directions


def _r_rome_without_c_inverse(inp: UpdateInputs) -> RankOne:
    """r-ROME with the direction k* itself instead of C⁻¹k* (as if C were the identity)."""
    denominator = inp.k_star @ inp.k_star
    return RankOne((inp.v_star - inp.W0 @ inp.k_star) / denominator, inp.k_star, denominator)


dropped_c_inverse = OurEditor(_r_rome_without_c_inverse)


def naive_r_rome(inputs: ConformInputs) -> None:
    """A correct control written apart from the fast path: the public code's flow (full
    forward passes, full-vocabulary v* loop, explicit float32 C⁻¹), ``rome_fast.edit.naive``."""
    NaiveEditor(
        inputs.loaded,
        hparams=inputs.hparams.replace(layer=inputs.layer),
        seed=inputs.seed,
        stats=inputs.C,
        templates=inputs.templates,
    ).edit(inputs.request, "r-rome")


def _r_rome_delta(inputs: ConformInputs, W0: Tensor | None = None) -> Tensor:
    """r-ROME's ΔW (d_out, d_in) in float32 from our keys and v*, against ``W0`` (default:
    the weight as it is now)."""
    prepared = editor_for(inputs).prepare(inputs.request)
    return rank_one_update(
        inputs.site.weight.detach() if W0 is None else W0,
        inputs.C,
        prepared.keys.k_star,
        prepared.keys.k_prompt,
        prepared.value.v_star,
        "r-rome",
        bias=None if inputs.site.bias is None else inputs.site.bias.detach(),
    )


def bf16_update(inputs: ConformInputs) -> Tensor:
    """r-ROME with ΔW rounded through bfloat16 (the update computed at low precision)."""
    return _r_rome_delta(inputs).bfloat16().float()


def scaled_update(inputs: ConformInputs) -> Tensor:
    """r-ROME with ΔW 0.5% short."""
    return 0.995 * _r_rome_delta(inputs)


def rank_two_term(inputs: ConformInputs) -> Tensor:
    """r-ROME plus a second rank-one term of 1e-4 of ‖ΔW‖ in seeded random directions."""
    delta = _r_rome_delta(inputs)
    g = torch.Generator().manual_seed(SEED)
    a, b = torch.randn(delta.shape[0], generator=g), torch.randn(delta.shape[1], generator=g)
    second: Tensor = torch.outer(a / a.norm(), b / b.norm())  # unit Frobenius norm
    return delta + 1e-4 * float(torch.linalg.norm(delta)) * second


def _kl_scaled(inputs: ConformInputs, factor: float) -> None:
    """r-ROME whose v* loop weighs its KL term ``factor`` times the given KL factor."""
    kl_factor = factor * inputs.hparams.v_star.kl_factor
    hparams = inputs.hparams.replace(kl_factor=kl_factor)
    editor_for(dataclasses.replace(inputs, hparams=hparams)).edit(inputs.request, "r-rome")


def no_kl_term(inputs: ConformInputs) -> None:
    """r-ROME whose v* loop drops the KL term (essence drift) of its loss."""
    _kl_scaled(inputs, 0.0)


def tenth_kl_term(inputs: ConformInputs) -> None:
    """r-ROME whose v* loop weighs the KL term a tenth of the given factor."""
    _kl_scaled(inputs, 0.1)


def wrong_layer(inputs: ConformInputs) -> None:
    """r-ROME written into the layer below the one asked for."""
    loaded, layer = inputs.loaded, inputs.layer - 1 if inputs.layer > 0 else inputs.layer + 1
    site = loaded.adapter.edited_site(loaded.model, layer)
    editor_for(dataclasses.replace(inputs, site=site)).edit(inputs.request, "r-rome")


def training_mode(inputs: ConformInputs) -> None:
    """r-ROME that leaves the model in training mode."""
    editor_for(inputs).edit(inputs.request, "r-rome")
    inputs.loaded.model.train()


def hook_left(inputs: ConformInputs) -> None:
    """r-ROME that leaves a (harmless) forward hook on the edited module."""
    editor_for(inputs).edit(inputs.request, "r-rome")
    inputs.site.module.register_forward_hook(lambda _module, _args, _output: None)


def flipped_requires_grad(inputs: ConformInputs) -> None:
    """r-ROME that leaves the edited weight's ``requires_grad`` flipped (our loader turns it
    off for inference; an editor that trains δ may turn it on and forget)."""
    editor_for(inputs).edit(inputs.request, "r-rome")
    weight = inputs.site.module.weight
    weight.requires_grad_(not weight.requires_grad)


def double_bias(inputs: ConformInputs) -> None:
    """r-ROME that leaves a parameter of another module in float64."""
    editor_for(inputs).edit(inputs.request, "r-rome")
    first = next(inputs.loaded.model.parameters())
    first.data = first.data.double()


def does_nothing(_inputs: ConformInputs) -> None:
    """Returns without editing."""


class StaleWeight:
    """r-ROME that caches the edited weight on its first call and computes every later
    update against that copy: right on a fresh model, wrong on edits in sequence."""

    def __init__(self) -> None:
        self.name = "stale_weight"
        self.uncontrolled: list[str] = []
        self.cached: Tensor | None = None

    def edit(self, inputs: ConformInputs) -> Tensor:
        if self.cached is None:
            self.cached = inputs.site.weight.detach().clone()
        return _r_rome_delta(inputs, self.cached)


def non_finite(inputs: ConformInputs) -> Tensor:
    """Returns a ΔW full of NaN."""
    return torch.full(tuple(inputs.site.weight.shape), float("nan"))


def hangs(_inputs: ConformInputs) -> None:
    """Never returns (waits on an event nobody sets)."""
    threading.Event().wait()


# Well over the --timeout the tests give it, so that it is late however busy the machine is.
SLOW_SECONDS = 1.5
slow_calls: list[str] = []  # the subject of each call of `slow` (tests read and clear it)


def slow(inputs: ConformInputs) -> Tensor:
    """A ΔW that changes every element of the weight, returned after ``SLOW_SECONDS``."""
    slow_calls.append(inputs.request.subject)
    time.sleep(SLOW_SECONDS)
    return torch.full(tuple(inputs.site.weight.shape), 1e-3)


def fails_on_second_case(inputs: ConformInputs) -> Tensor:
    """r-ROME on the first case, a ΔW 0.5% short on every other: only merging every case's
    verdict fails it."""
    return scaled_update(inputs) if inputs.request.case_id else _r_rome_delta(inputs)


def fails_on_first_case(inputs: ConformInputs) -> Tensor:
    """A ΔW 0.5% short on the first case, r-ROME on every other (a last-case-wins merge
    passes it)."""
    return _r_rome_delta(inputs) if inputs.request.case_id else scaled_update(inputs)


def wrong_key(inputs: ConformInputs) -> None:
    """r-ROME with the key read one word early: the subject's last word is moved into the
    prompt (the text is unchanged), so keys and v* sit at the wrong token."""
    r = inputs.request
    head, _, last = r.subject.rpartition(" ")
    if not head:
        raise ValueError(f"wrong_key needs a subject of two words or more, got {r.subject!r}")
    shifted = dataclasses.replace(r, prompt=r.prompt.replace("{}", "{} " + last), subject=head)
    editor_for(inputs).edit(shifted, "r-rome")


def two_weights(inputs: ConformInputs) -> None:
    """r-ROME, plus a rank-one nudge of the MLP's input projection in the same layer."""
    editor_for(inputs).edit(inputs.request, "r-rome")
    mlp = inputs.loaded.adapter.mlp(inputs.loaded.model, inputs.layer)
    first = next(m for name, m in mlp.named_children() if name != inputs.loaded.adapter.proj_name)
    W = weight_matrix(first)
    with torch.no_grad():
        W[0, 0] += 1e-3


@dataclasses.dataclass
class RevertByRounding(OurEditor):
    """Reverts by subtracting ΔW instead of restoring the saved weight: off by rounding."""

    def revert(self) -> None:
        editor, result = self._applied.pop()
        apply_factors(editor.site.module, result.update.at(editor.site.module_name), sign=-1.0)


revert_by_rounding = RevertByRounding("r-rome")


def raises_midway(inputs: ConformInputs) -> None:
    """Writes NaN into the edited weight, then fails: the harness must undo the write."""
    with torch.no_grad():
        inputs.site.weight[0, 0] = float("nan")
    raise RuntimeError("planted failure after a partial write")
