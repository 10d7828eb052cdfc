"""The naive yardstick computes the same edit as the fast editor (it must be right to be a
fair baseline): same keys, the same v* trajectory, the same ΔW for every built-in variant."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
import torch

from rome_fast.edit.editor import Editor
from rome_fast.edit.keys import compute_keys
from rome_fast.edit.naive import NaiveEditor, naive_keys, naive_value
from rome_fast.edit.request import EditRequest
from rome_fast.edit.templates import generate_context_templates
from rome_fast.edit.value import compute_v_star
from rome_fast.hparams.defaults import HParams, hparams_for
from rome_fast.infra.reproducer import reproducible
from rome_fast.methods.rome.update import RankOne, UpdateInputs, insertion_update
from rome_fast.model.loader import LoadedModel, load_model, random_model
from rome_fast.model.weights import module_bias, weight_matrix
from tests.models import at, pretrained, require_smollm2
from tests.public_rome import CpuTokenizer, RecordedAdam, public_compute_v

REQUEST = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")
N_TEMPLATES = 4  # "{}" and three sampled ones: enough to make k* differ from k_prompt
V_STEPS = 3  # two Adam steps and a final evaluation; no early exit on a random model
FAMILIES = ("tiny-gpt2", "tiny-gptj", "tiny-neox", "tiny-llama")


@cache
def tiny(name: str) -> tuple[LoadedModel, HParams, list[str]]:
    loaded = random_model(name, seed=0)
    hparams = hparams_for(f"random:{name}").replace(v_num_grad_steps=V_STEPS)
    templates = generate_context_templates(loaded.model, loaded.tokenizer, seed=0)
    return loaded, hparams, templates[:N_TEMPLATES]


def second_moment(d_in: int) -> torch.Tensor:
    """A well-conditioned SPD C (d_in, d_in), seeded."""
    keys = torch.randn(4 * d_in, d_in, generator=torch.Generator().manual_seed(1))
    return keys.T @ keys / keys.shape[0]


@pytest.mark.parametrize("name", FAMILIES)
@reproducible
def test_keys_match_the_batched_keys(name: str) -> None:
    loaded, hparams, templates = tiny(name)
    fast = compute_keys(*at(loaded, hparams.layer), REQUEST, templates)
    naive = naive_keys(*at(loaded, hparams.layer), REQUEST, templates)
    for key in ("k_star", "k_prompt"):
        got, want = getattr(naive, key), getattr(fast, key)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (
            f"{key}: max |naive − fast| = {float((got - want).abs().max()):.2e}"
        )
    # The r-ROME average of module outputs is W0 k* + b (the module is affine).
    module = loaded.adapter.edited_module(loaded.model, hparams.layer)
    bias = module_bias(module)
    expected = weight_matrix(module) @ fast.k_star + (0 if bias is None else bias)
    torch.testing.assert_close(naive.out_star, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "variant"),
    # Every variant on GPT-2 (Conv1D, bias); a Linear without bias once.
    [
        ("tiny-gpt2", "rome"),
        ("tiny-gpt2", "r-rome"),
        ("tiny-gpt2", "p-rome"),
        ("tiny-llama", "r-rome"),
    ],
)
@reproducible
def test_edit_matches_the_fast_editor(name: str, variant: str) -> None:
    loaded, hparams, templates = tiny(name)
    module = loaded.adapter.edited_module(loaded.model, hparams.layer)
    W0 = weight_matrix(module).detach().clone()
    C = second_moment(W0.shape[1])
    deltas, results = {}, {}
    for impl, cls in (("fast", Editor), ("naive", NaiveEditor)):
        editor = cls(loaded, hparams=hparams, stats=C, templates=templates)
        results[impl] = editor.edit(REQUEST, variant)
        deltas[impl] = weight_matrix(module).detach() - W0
        editor.restore()
        assert torch.equal(weight_matrix(module), W0), f"{impl} restore is not bit-exact"
    scale = float(deltas["fast"].norm())
    error = float((deltas["naive"] - deltas["fast"]).norm()) / scale
    assert scale > 0
    assert error < 1e-4, f"{variant}: relative ΔW difference {error:.2e}"
    assert results["naive"].denominator == pytest.approx(results["fast"].denominator, rel=1e-4)
    assert results["naive"].adam_steps == V_STEPS - 1


def test_naive_refuses_variants_it_does_not_implement() -> None:
    loaded, hparams, templates = tiny("tiny-gpt2")
    module = loaded.adapter.edited_module(loaded.model, hparams.layer)
    before = weight_matrix(module).detach().clone()
    editor = NaiveEditor(
        loaded, hparams=hparams, stats=second_moment(before.shape[1]), templates=templates
    )

    def unit_u(inp: UpdateInputs) -> RankOne:  # an insertion, but not the naive flow's rule
        return insertion_update(inp, inp.k_star, inp.k_star)

    with pytest.raises(ValueError, match="naive yardstick implements only"):
        editor.edit(REQUEST, unit_u)
    assert torch.equal(weight_matrix(module), before)


def public_delta(
    loaded: LoadedModel, hparams: HParams, request: EditRequest, templates: list[str]
) -> tuple[torch.Tensor, int]:
    """δ and the Adam step count of the public ``compute_v`` on the same inputs (CPU-patched)."""
    adapter, layer = loaded.adapter, hparams.layer
    layers = f"{adapter.layers_path}.{{}}"
    config: Any = pretrained(loaded).config  # given GPT-2's n_embd below, whatever the family
    with public_compute_v() as compute_v:
        from rome.rome_hparams import ROMEHyperParams  # type: ignore[import-not-found]

        public = ROMEHyperParams(
            layers=[layer],
            v_num_grad_steps=hparams.v_star.num_grad_steps,
            v_lr=hparams.v_star.lr,
            v_loss_layer=adapter.n_layers(loaded.model) - 1,
            v_weight_decay=hparams.v_star.weight_decay,
            clamp_norm_factor=hparams.v_star.clamp_norm_factor,
            kl_factor=hparams.v_star.kl_factor,
            rewrite_module_tmp=f"{layers}.{adapter.mlp_name}.{adapter.proj_name}",
            layer_module_tmp=layers,
            mlp_module_tmp=f"{layers}.{adapter.mlp_name}",
        )
        had_n_embd = hasattr(config, "n_embd")
        config.n_embd = config.hidden_size  # the public code reads GPT-2's name for it
        try:
            d_in = weight_matrix(adapter.edited_module(loaded.model, layer)).shape[1]
            compute_v.compute_v(
                loaded.model,
                CpuTokenizer(loaded.tokenizer),
                {
                    "prompt": request.prompt,
                    "subject": request.subject,
                    "target_new": {"str": " " + request.target_new},
                },
                public,
                layer,
                torch.ones(d_in),
                templates,
            )
        finally:
            if not had_n_embd:
                del config.n_embd
    (adam,) = RecordedAdam.instances
    return adam.param_groups[0]["params"][0].detach().clone(), adam.steps


def assert_same_loop_as_the_public_code(
    loaded: LoadedModel, hparams: HParams, request: EditRequest, templates: list[str]
) -> int:
    args = (*at(loaded, hparams.layer), request, templates, hparams.v_star)
    naive, fast = naive_value(*args), compute_v_star(*args)
    delta, steps = public_delta(loaded, hparams, request, templates)
    where = f"{loaded.name} layer {hparams.layer}, {request}, templates {templates}"
    assert naive.adam_steps == fast.adam_steps == steps, (
        f"Adam steps: naive {naive.adam_steps}, fast {fast.adam_steps}, public {steps} ({where})"
    )
    for name, ours in (("naive", naive.v_star - naive.v_init), ("fast", fast.delta)):
        error = float((ours - delta).norm() / delta.norm())
        assert error <= 1e-3, f"‖δ_{name} − δ_public‖/‖δ_public‖ = {error:.2e} ({where})"
    return steps


@pytest.mark.anchors
def test_naive_value_is_the_public_loop_on_a_tiny_model() -> None:
    loaded, hparams, _ = tiny("tiny-gpt2")
    templates = ["{}", "Once upon a time. {}"]  # the public code formats them: no braces
    steps = assert_same_loop_as_the_public_code(loaded, hparams, REQUEST, templates)
    assert steps == V_STEPS - 1  # no early stop on a random model: every step is compared


@pytest.mark.smollm2
@pytest.mark.anchors
def test_naive_value_stops_early_where_the_public_code_stops() -> None:
    require_smollm2()
    loaded = load_model("smollm2")
    hparams = hparams_for("smollm2")
    request = EditRequest("{} is located in the city of", "The Eiffel Tower", "Paris")
    templates = ["{}", "Once upon a time. {}", "The following is true. {}"]
    steps = assert_same_loop_as_the_public_code(loaded, hparams, request, templates)
    assert steps < hparams.v_star.num_grad_steps - 1  # the loss fell below 0.05: an early stop
