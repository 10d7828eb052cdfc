"""v*: the public code's loss and loop, checked against the written-out loop on full logits
(``rome_fast.edit.naive.naive_value``, the naive yardstick's own v*).

The fast loop (prefix cache, suffix-only passes, gathered read-out) must give the plain
full-forward loop's loss trace, step count and v* up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from rome_fast.edit.naive import naive_value
from rome_fast.edit.request import EditRequest
from rome_fast.edit.value import (
    LOSS_PARTS,
    build_value_batch,
    compute_v_star,
    read_mlp_positions,
    readout_logits,
)
from rome_fast.infra.reproducer import reproducible
from rome_fast.model.hooks import capture
from rome_fast.model.tokens import subject_last_index, target_token_ids
from tests.models import EDIT, FAMILIES, REQUEST, TEMPLATES, at, tiny_hparams, tiny_model

LAYER = 1


def reference_initial_nll(family: str, padding_side: str) -> float:
    """The public code's NLL at δ = 0: labels laid over full logits, masked, / target length."""
    loaded = tiny_model(family)
    vb = build_value_batch(loaded.tokenizer, EDIT, TEMPLATES, padding_side)
    batch = vb.batch
    with torch.no_grad():
        logits = loaded.model(**batch.model_inputs("cpu")).logits[: vb.n_prompts]  # (n, T, V)
    labels = torch.full(logits.shape[:2], -100)
    for row in range(vb.n_prompts):
        end = int(batch.offsets[row] + batch.attention_mask[row].sum())  # after the last real token
        # logits at t predict token t+1: the target sits one position after the labels' slots
        labels[row, end - vb.n_target : end] = vb.target_ids
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(2, labels.clamp(min=0)[..., None])[..., 0]
    mask = (labels != -100).float()
    return float((-(picked * mask).sum(1) / vb.n_target).mean())


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-neox"])
def test_first_loss_is_the_public_nll(family: str, padding_side: str) -> None:
    hp = tiny_hparams(family, padding_side=padding_side, v_num_grad_steps=1)
    result = compute_v_star(*at(tiny_model(family), LAYER), EDIT, TEMPLATES, hp.v_star)
    # δ = 0 in the first pass: KL and weight decay vanish, the loss is the NLL alone.
    assert result.loss_trace[0] == pytest.approx(
        reference_initial_nll(family, padding_side), rel=1e-5
    )


def test_rewriting_prompts_end_with_the_target_but_its_last_token() -> None:
    loaded = tiny_model("tiny-gpt2")
    vb = build_value_batch(loaded.tokenizer, EDIT, TEMPLATES, "left")
    ids = vb.batch.input_ids
    for i in range(vb.n_prompts):
        positions = vb.target_positions[vb.target_rows == i]
        # the token after each read position is the next target token (all but the last)
        assert ids[i, positions[:-1] + 1].tolist() == vb.target_ids[:-1].tolist()
        assert int(positions[-1]) == ids.shape[1] - 1  # left padding: rows end together
    essence = vb.batch.input_ids[vb.essence_row][vb.batch.attention_mask[vb.essence_row].bool()]
    assert loaded.tokenizer.decode(essence) == f"{EDIT.subject} is a"


def test_readout_logits_equal_the_full_forward() -> None:
    loaded = tiny_model("tiny-llama")
    vb = build_value_batch(loaded.tokenizer, EDIT, TEMPLATES, "left")
    inputs = vb.batch.model_inputs("cpu")
    with torch.no_grad():
        full = loaded.model(**inputs).logits
        picked = readout_logits(loaded.model, inputs, vb.target_rows, vb.target_positions)
    torch.testing.assert_close(picked, full[vb.target_rows, vb.target_positions].float())


def test_v_init_is_the_module_output_at_the_bare_prompt() -> None:
    loaded = tiny_model("tiny-gptj")
    prompt, subject, _ = REQUEST
    result = compute_v_star(*at(loaded, LAYER), EDIT, TEMPLATES, tiny_hparams("tiny-gptj").v_star)
    ids, index = subject_last_index(loaded.tokenizer, prompt, subject)
    module = loaded.adapter.edited_module(loaded.model, LAYER)
    with torch.no_grad(), capture(module, output=True) as seen:
        loaded.model(input_ids=torch.tensor([ids]))
    assert seen.output is not None
    torch.testing.assert_close(result.v_init, seen.output[0, index].float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.v_star, result.v_init + result.delta)


def test_the_last_iteration_only_evaluates() -> None:
    hp = tiny_hparams("tiny-gpt2", v_num_grad_steps=4)
    result = compute_v_star(*at(tiny_model("tiny-gpt2"), LAYER), EDIT, TEMPLATES, hp.v_star)
    assert len(result.loss_trace) == 4
    assert result.adam_steps == 3


def test_early_stop_below_threshold() -> None:
    hp = tiny_hparams("tiny-gpt2", v_early_stop_loss=1e9)
    result = compute_v_star(*at(tiny_model("tiny-gpt2"), LAYER), EDIT, TEMPLATES, hp.v_star)
    assert len(result.loss_trace) == 1
    assert result.adam_steps == 0
    assert torch.equal(result.v_star, result.v_init)


@pytest.mark.parametrize("loop", [compute_v_star, naive_value], ids=["fast", "naive"])
def test_early_stop_compares_the_total_loss_not_a_part(loop: Callable[..., Any]) -> None:
    """A threshold the NLL alone crosses after the first Adam step while the total (the weight
    decay and the KL are no longer zero there) never does: the loop must run to its end.

    Step 0 cannot tell the two apart (δ = 0, so the total is the NLL); the threshold is read
    off a run that never stops, between step 1's NLL and every total."""
    args = (*at(tiny_model("tiny-gpt2"), LAYER), EDIT, TEMPLATES)
    never = loop(*args, tiny_hparams("tiny-gpt2", v_num_grad_steps=4, v_early_stop_loss=0.0).v_star)
    totals = [step["total"] for step in never.loss_steps]
    threshold = (never.loss_steps[1]["nll"] + min(totals)) / 2
    assert never.loss_steps[1]["nll"] < threshold < min(totals), never.loss_steps
    hp = tiny_hparams("tiny-gpt2", v_num_grad_steps=4, v_early_stop_loss=threshold)
    result = loop(*args, hp.v_star)
    assert result.loss_trace == totals, f"stopped on a part of the loss below {threshold}"
    assert result.adam_steps == 3


def test_delta_is_clamped_to_the_ball() -> None:
    hp = tiny_hparams("tiny-gpt2", clamp_norm_factor=1e-3, v_weight_decay=0.0)
    result = compute_v_star(*at(tiny_model("tiny-gpt2"), LAYER), EDIT, TEMPLATES, hp.v_star)
    radius = 1e-3 * float(result.v_init.norm())
    assert float(result.delta.norm()) == pytest.approx(radius, rel=1e-4)


def test_deterministic_and_leaves_no_hooks_or_grads() -> None:
    loaded = tiny_model("tiny-neox")
    hp = tiny_hparams("tiny-neox")
    first = compute_v_star(*at(loaded, LAYER), EDIT, TEMPLATES, hp.v_star)
    second = compute_v_star(*at(loaded, LAYER), EDIT, TEMPLATES, hp.v_star)
    assert torch.equal(first.v_star, second.v_star)
    assert first.loss_trace == second.loss_trace
    module = loaded.adapter.edited_module(loaded.model, LAYER)
    assert not module._forward_hooks
    assert not module._forward_pre_hooks
    assert all(p.grad is None for p in loaded.model.parameters())


# (request, templates): multi-token targets; the subject first in the prompt or after
# other words; templates of different lengths (so the subject-last tokens sit in different
# columns before alignment).
EQUALITY_CASES = {
    "multi-token target": (EditRequest(*REQUEST[:2], "Rome, Italy"), TEMPLATES),
    "subject mid-prompt": (
        EditRequest("The tallest tower of {} stands in", "Paris", "Lyon and Nice"),
        ["{}", "A. {}", "Once upon a time there was a very long story about {{it}}. {}"],
    ),
    # every subject-last token is the first token: nothing to cache (split 0)
    "one-token subject first": (EditRequest("{} is in", "Paris", "Rome, Italy"), ["{}"]),
    # some rows are all padding before their subject-last token (split > 0)
    "one-token subject, long template": (
        EditRequest("{} is in", "Paris", "Rome, Italy"),
        ["{}", "Once upon a time. {}"],
    ),
}


@pytest.mark.parametrize("case", list(EQUALITY_CASES))
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("family", FAMILIES)
@reproducible
def test_fast_v_star_equals_the_full_forward_loop(
    family: str, padding_side: str, case: str
) -> None:
    loaded = tiny_model(family)
    hp = tiny_hparams(family, padding_side=padding_side, v_num_grad_steps=4)
    request, templates = EQUALITY_CASES[case]
    # every case: a multi-token target
    assert len(target_token_ids(loaded.tokenizer, request.target_new)) > 1
    fast = compute_v_star(*at(loaded, LAYER), request, templates, hp.v_star)
    ref = naive_value(*at(loaded, LAYER), request, templates, hp.v_star)
    assert fast.adam_steps == ref.adam_steps, f"steps {fast.adam_steps} != {ref.adam_steps}"
    assert fast.loss_trace == pytest.approx(ref.loss_trace, rel=1e-4), (
        f"loss traces differ: {fast.loss_trace} vs {ref.loss_trace}"
    )
    error = float((fast.v_star - ref.v_star).norm() / ref.v_star.norm())
    assert error <= 1e-4, f"‖v*_fast − v*_ref‖ / ‖v*_ref‖ = {error:.3g}"


@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama"])
@reproducible
def test_loss_steps_match_the_plain_loop_part_by_part(family: str) -> None:
    """Each recorded part (NLL, KL and weight decay as they enter the total, the total, ‖δ‖)
    equals the plain loop's at every iteration, so two runs can be compared step by step."""
    loaded = tiny_model(family)
    hp = tiny_hparams(family, v_num_grad_steps=4)
    args = (*at(loaded, LAYER), EDIT, TEMPLATES, hp.v_star)
    fast, ref = compute_v_star(*args), naive_value(*args)
    assert len(fast.loss_steps) == len(ref.loss_steps) == 4
    for i, (got, want) in enumerate(zip(fast.loss_steps, ref.loss_steps, strict=True)):
        assert set(got) == set(LOSS_PARTS)
        for part in LOSS_PARTS:
            assert got[part] == pytest.approx(want[part], rel=1e-4, abs=1e-7), (
                f"step {i} {part}: fast {got[part]} vs plain {want[part]}"
            )
    assert fast.loss_trace == [step["total"] for step in fast.loss_steps]


def test_loss_parts_sum_to_the_total() -> None:
    hp = tiny_hparams("tiny-gptj", v_num_grad_steps=4)
    result = compute_v_star(*at(tiny_model("tiny-gptj"), LAYER), EDIT, TEMPLATES, hp.v_star)
    for i, step in enumerate(result.loss_steps):
        parts = step["nll"] + step["kl"] + step["weight_decay"]
        assert parts == pytest.approx(step["total"], rel=1e-6), f"step {i}: {step}"
    assert result.loss_steps[0]["delta_norm"] == 0.0  # the first iteration evaluates δ = 0
    assert result.loss_steps[-1]["delta_norm"] == pytest.approx(float(result.delta.norm()))


@pytest.mark.parametrize("layer", [0, 2, 3], ids=["lowest", "below the top", "top"])
@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama"])
def test_fast_v_star_equals_the_full_forward_loop_at_every_depth(family: str, layer: int) -> None:
    """Below the top block the MLPs run up to each row's last read column, in it at the read
    positions only; editing the top block leaves no block above to run. The prompt ends with
    the subject, so that even at the top block δ reaches a read position (otherwise only
    rounding noise steers Adam there, and the two loops need not agree)."""
    loaded = tiny_model(family)
    hp = tiny_hparams(family, v_num_grad_steps=4)
    request = EditRequest("People talk about {}", "The Eiffel Tower", "Rome, Italy")
    args = (*at(loaded, layer), request, TEMPLATES, hp.v_star)
    fast, ref = compute_v_star(*args), naive_value(*args)
    assert fast.loss_trace == pytest.approx(ref.loss_trace, rel=1e-4)
    error = float((fast.v_star - ref.v_star).norm() / ref.v_star.norm())
    assert error <= 1e-4, f"‖v*_fast − v*_ref‖ / ‖v*_ref‖ = {error:.3g} at layer {layer}"


def test_read_mlp_positions() -> None:
    # rows 0 and 1 read columns 2 and 3 (a two-token target), row 2 (essence) column 0
    rows, columns = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([2, 3, 2, 3, 0])
    below, top = read_mlp_positions(rows, columns, n_rows=3, width=4)
    assert below.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]  # row 2 stops at its column 0
    assert top.tolist() == [2, 3, 6, 7, 8]
