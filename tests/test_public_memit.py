"""The original MEMIT code under the harness (``rome_fast.conform.public_memit``), on tiny random
GPT-2: its ΔW per layer against our float64 reference on the keys and targets it used itself,
and its key/residual mismatch (SPEC §7) measured. Findings: docs/results/public-memit.md."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from rome_fast.conform.patches import tuple_block_outputs
from rome_fast.conform.public import weight_change
from rome_fast.conform.public_memit import MemitInputs, PublicMemit
from rome_fast.methods.memit.update import MemitHParams
from rome_fast.model.loader import LoadedModel
from rome_ref.batched import memit_delta
from tests.anchors import checkout
from tests.batch_editing import FACTS
from tests.models import fresh_model, key_dim, random_spd, tiny_hparams, tiny_model, weights_of
from tests.public_batched import (
    LAYERS,
    TEMPLATES,
    check_memit_keys,
    check_packages_put_back,
    edited_weight,
    rounding_ratio,
)


@dataclass
class PublicRun:
    """One batch of four facts written by the public code, with the weights before it."""

    loaded: LoadedModel
    editor: PublicMemit
    inputs: MemitInputs
    before: dict[str, Tensor]


def public_run(lam: float) -> PublicRun:
    loaded = fresh_model("tiny-gpt2")
    C = {layer: random_spd(key_dim(loaded, layer), seed=layer) for layer in LAYERS}
    inputs = MemitInputs(
        loaded,
        FACTS[:4],
        TEMPLATES,
        C,
        tiny_hparams("tiny-gpt2"),
        MemitHParams(layers=LAYERS, mom2_update_weight=lam),
        seed=0,
    )
    before = weights_of(loaded)
    editor = PublicMemit(checkout("memit"))
    editor.edit(inputs)
    return PublicRun(loaded, editor, inputs, before)


@pytest.fixture(scope="module", params=[100.0, 15000.0], ids=["lambda100", "lambda15000"])
def run(request: pytest.FixtureRequest) -> PublicRun:
    # λ = 100 lets the batch's keys dominate C's on this scale; 15000 is the public GPT-J value
    return public_run(request.param)


@pytest.mark.anchors
def test_public_delta_per_layer_is_the_reference_on_its_own_keys_and_targets(
    run: PublicRun,
) -> None:
    """ΔW_l = R_l K_lᵀ (λC_l + K_l K_lᵀ)⁻¹ with R_l = (Z − H_l)/(L − i), on the K, Z and H the
    code computed itself. The code solves in float64 like the reference, then casts ΔW to
    float32 and adds it to the float32 W0: two roundings, so |W1 − W0 − ΔW_ref| ≤ ε₃₂/2
    (|W1| + |ΔW_ref|) per element. Measured (2 seeds × λ 1, 100, 15000 × 2 layers): at most
    0.993 of that bound; the margin 1.05 covers the two float64 solves' difference (κ ε₆₄)."""
    captured, method = run.editor.captured, run.inputs.method
    assert [layer for layer, _ in captured.keys] == list(LAYERS)
    for i, ((layer, K), R) in enumerate(zip(captured.keys, captured.residuals(), strict=True)):
        reference = memit_delta(
            run.inputs.C[layer].double().numpy(),
            K.double().numpy(),
            R.double().numpy() / (len(LAYERS) - i),
            method.mom2_update_weight,
        )
        delta = torch.from_numpy(reference)  # (d_out, d_in) float64
        W1 = edited_weight(run.loaded, layer)
        worst = rounding_ratio(W1, weight_change(run.loaded, run.before, layer), delta)
        assert worst <= 1.05, f"layer {layer}: ΔW off the reference by {worst:.3g}× rounding"


def module_name(run: PublicRun, layer: int) -> str:
    return run.loaded.adapter.edited_site(run.loaded.model, layer).module_name


@pytest.mark.anchors
def test_public_keys_are_half_bare_half_prefix_mean_and_residuals_bare(run: PublicRun) -> None:
    """SPEC §7's mismatch, confirmed: ``compute_ks`` writes at ½ bare-prompt key + ½ the mean
    over the prefixed templates, while the residual it divides over the layers is measured at
    the bare prompt only (``public_batched.check_memit_keys``: floors and tolerance)."""
    check_memit_keys("tiny-gpt2", list(run.inputs.requests), run.editor.captured)


@pytest.mark.anchors
@pytest.mark.parametrize("run", [100.0], indirect=True, ids=["lambda100"])
def test_public_edit_writes_only_its_layers_and_reverts_bit_identical(run: PublicRun) -> None:
    after = weights_of(run.loaded)
    changed = {name for name, w in after.items() if not torch.equal(w, run.before[name])}
    assert changed == {f"{module_name(run, layer)}.weight" for layer in LAYERS}
    for layer in LAYERS:  # the ΔW the adapter reports is what the weights show
        delta = weight_change(run.loaded, run.before, layer)
        assert torch.equal(run.editor.captured.deltas[layer], delta)
    editor = PublicMemit(checkout("memit"))
    editor.edit(run.inputs)  # a second batch on top, then undone alone
    editor.revert()
    assert all(torch.equal(w, weights_of(run.loaded)[name]) for name, w in after.items())


@pytest.mark.anchors
def test_public_code_refuses_a_family_it_cannot_run_before_touching_it() -> None:
    loaded = fresh_model("tiny-llama")
    before = weights_of(loaded)
    C = {layer: random_spd(key_dim(loaded, layer)) for layer in LAYERS}
    inputs = MemitInputs(
        loaded, FACTS[:2], TEMPLATES, C, tiny_hparams("tiny-llama"), MemitHParams(LAYERS), 0
    )
    with pytest.raises(ValueError, match="GPT-2 and GPT-J layouts only"):
        PublicMemit(checkout("memit")).edit(inputs)
    assert all(torch.equal(w, before[name]) for name, w in weights_of(loaded).items())


@pytest.mark.anchors
@pytest.mark.parametrize(
    ("templates", "layers", "message"),
    [
        (["{}", "He said {{hi}}. {}"], LAYERS, "escaped braces"),
        (TEMPLATES, (*LAYERS, 3), r"no C for edited layers \[3\]"),
    ],
)
def test_public_inputs_it_cannot_take_are_refused_by_name(
    templates: list[str], layers: tuple[int, ...], message: str
) -> None:
    loaded = fresh_model("tiny-gpt2")
    before = weights_of(loaded)
    C = {layer: random_spd(key_dim(loaded, layer)) for layer in LAYERS}
    method = MemitHParams(layers)
    inputs = MemitInputs(loaded, FACTS[:2], templates, C, tiny_hparams("tiny-gpt2"), method, 0)
    with pytest.raises(ValueError, match=message):
        PublicMemit(checkout("memit")).edit(inputs)
    assert all(torch.equal(w, before[name]) for name, w in weights_of(loaded).items())


@pytest.mark.anchors
def test_public_packages_do_not_leak_into_sys_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """The MEMIT checkout's ``rome`` and ``util`` must not shadow the ROME checkout's."""
    check_packages_put_back(
        monkeypatch, ("rome", "util", "util.nethook"), lambda: PublicMemit(checkout("memit"))
    )


def test_tuple_block_outputs_show_tuples_to_hooks_and_tensors_to_the_model() -> None:
    loaded = tiny_model("tiny-gpt2")
    blocks = loaded.adapter.layers(loaded.model)
    ids = loaded.tokenizer("The Eiffel Tower is in", return_tensors="pt").input_ids
    seen: list[object] = []
    with torch.no_grad():
        plain = loaded.model(ids).logits
        with tuple_block_outputs(blocks):
            handle = blocks[1].register_forward_hook(lambda _m, _i, out: seen.append(out))
            try:
                shown = loaded.model(ids).logits
            finally:
                handle.remove()
    assert type(seen[0]) is tuple
    assert len(seen[0]) == 1
    assert torch.equal(shown, plain)
    assert "__call__" not in vars(type(blocks[1]))  # the class is as it was, not re-patched
    assert not blocks[1]._forward_hooks
