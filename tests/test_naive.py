"""The naive yardstick computes the same edit as the fast editor (it must be right to be a
fair baseline): same keys, the same v* trajectory, the same ΔW for every built-in variant."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from rome_fast.editor import Editor, EditRequest
from rome_fast.hparams import HParams, hparams_for
from rome_fast.keys import compute_keys
from rome_fast.models import LoadedModel, random_model
from rome_fast.naive import NaiveEditor, naive_keys, naive_value
from rome_fast.templates import generate_context_templates
from rome_fast.update import RankOne, UpdateInputs, insertion_update
from rome_fast.value import compute_v_star
from rome_fast.weights import module_bias, weight_matrix

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


def reproduce(name: str) -> str:
    return (
        f"loaded, hparams, templates = tiny({name!r}) in tests/test_naive.py, request {REQUEST!r}"
    )


@pytest.mark.parametrize("name", FAMILIES)
def test_keys_match_the_batched_keys(name: str) -> None:
    loaded, hparams, templates = tiny(name)
    fast = compute_keys(loaded, hparams.layer, REQUEST.prompt, REQUEST.subject, templates)
    naive = naive_keys(loaded, hparams.layer, REQUEST.prompt, REQUEST.subject, templates)
    for key in ("k_star", "k_prompt"):
        got, want = getattr(naive, key), getattr(fast, key)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (
            f"{key}: max |naive − fast| = {float((got - want).abs().max()):.2e}\n{reproduce(name)}"
        )
    # The r-ROME average of module outputs is W0 k* + b (the module is affine).
    module = loaded.adapter.edited_module(loaded.model, hparams.layer)
    bias = module_bias(module)
    expected = weight_matrix(module) @ fast.k_star + (0 if bias is None else bias)
    torch.testing.assert_close(naive.out_star, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-gpt2"])  # the edit test covers Llama's v*
def test_value_matches_the_fast_loop(name: str) -> None:
    loaded, hparams, templates = tiny(name)
    args = (REQUEST.prompt, REQUEST.subject, REQUEST.target_new, templates)
    fast = compute_v_star(loaded, hparams.layer, *args, hparams)
    naive = naive_value(loaded, hparams, *args)
    assert len(fast.loss_trace) == len(naive.loss_trace) == V_STEPS, reproduce(name)
    torch.testing.assert_close(
        torch.tensor(naive.loss_trace), torch.tensor(fast.loss_trace), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(naive.v_init, fast.v_init, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        naive.v_star, fast.v_star, rtol=1e-4, atol=1e-5, msg=lambda m: f"v*: {m}\n{reproduce(name)}"
    )


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
    assert error < 1e-4, f"{variant}: relative ΔW difference {error:.2e}\n{reproduce(name)}"
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
