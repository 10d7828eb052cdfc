"""Hooks: they capture, add out of place, stop the forward, and always remove themselves."""

from __future__ import annotations

import pytest
import torch

from rome_fast.model.hooks import (
    StopForward,
    add_to_output,
    capture,
    only_at,
    replay_blocks,
    run_until,
)
from tests.models import FAMILIES, tiny_model

LAYER = 1


def inputs() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor([[464, 412, 733, 9096, 318], [1212, 318, 257, 1332, 13]])}


def edited(family: str = "tiny-gpt2") -> torch.nn.Module:
    loaded = tiny_model(family)
    return loaded.adapter.edited_module(loaded.model, LAYER)


def assert_no_hooks(module: torch.nn.Module) -> None:
    assert not module._forward_hooks, "a forward hook was left behind"
    assert not module._forward_pre_hooks, "a forward pre-hook was left behind"


def test_capture_records_input_and_output() -> None:
    loaded = tiny_model("tiny-gpt2")
    module = edited()
    with torch.no_grad(), capture(module, output=True) as seen:
        loaded.model(**inputs())
    assert seen.input is not None
    assert seen.output is not None
    assert seen.calls == 1
    with torch.no_grad():
        torch.testing.assert_close(module(seen.input), seen.output)
    assert_no_hooks(module)


def test_capture_removes_itself_on_error() -> None:
    module = edited()
    with pytest.raises(RuntimeError, match="boom"), capture(module, output=True):
        raise RuntimeError("boom")
    assert_no_hooks(module)


@pytest.mark.parametrize("output", [False, True])
def test_run_until_stops_after_the_module(output: bool) -> None:
    loaded = tiny_model("tiny-gpt2")
    module = edited()
    above = loaded.adapter.block(loaded.model, LAYER + 1)
    reached = []
    handle = above.register_forward_pre_hook(lambda *_: reached.append(1))
    try:
        with torch.no_grad(), capture(module, stop=True, output=output) as seen:
            run_until(loaded.model, **inputs())
    finally:
        handle.remove()
    assert reached == []
    assert seen.input is not None
    assert (seen.output is not None) == output
    assert_no_hooks(module)


def test_stop_forward_escapes_a_plain_forward() -> None:
    loaded = tiny_model("tiny-gpt2")
    with pytest.raises(StopForward), torch.no_grad(), capture(edited(), stop=True):
        loaded.model(**inputs())
    assert_no_hooks(edited())


def test_add_to_output_adds_at_the_positions_only_and_out_of_place() -> None:
    loaded = tiny_model("tiny-llama")
    module = edited("tiny-llama")
    delta = torch.randn(64, generator=torch.Generator().manual_seed(0))
    rows, positions = torch.tensor([0, 1]), torch.tensor([3, 1])
    # the first capture sees the module's own output, the last one the shifted output
    with (
        torch.no_grad(),
        capture(module, output=True) as clean,
        add_to_output(module, delta, rows, positions),
        capture(module, output=True) as shifted,
    ):
        loaded.model(**inputs())
    assert clean.output is not None
    assert shifted.output is not None
    expected = clean.output.clone()
    expected[rows, positions] += delta
    torch.testing.assert_close(shifted.output, expected)
    assert not torch.equal(clean.output, shifted.output)  # the original was not mutated
    assert_no_hooks(module)


def test_add_to_output_carries_gradients_to_delta() -> None:
    loaded = tiny_model("tiny-gpt2")
    module = edited()
    delta = torch.zeros(64, requires_grad=True)
    with add_to_output(module, delta, torch.tensor([0]), torch.tensor([4])):
        logits = loaded.model(**inputs()).logits
    (grad,) = torch.autograd.grad(logits[0, 4].sum(), [delta])
    assert float(grad.abs().sum()) > 0
    assert all(p.grad is None for p in loaded.model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_replay_blocks_gives_the_full_forward(family: str) -> None:
    """Replaying a block's recorded output reproduces the forward pass above it."""
    loaded = tiny_model(family)
    model = loaded.model
    blocks = loaded.adapter.layers(model)
    with torch.no_grad(), capture(blocks[LAYER], output=True) as seen:
        full = model(**inputs()).logits
    assert seen.output is not None
    with torch.no_grad(), replay_blocks(blocks, LAYER, seen.output, as_tuple=seen.output_is_tuple):
        replayed = model(**inputs()).logits
    torch.testing.assert_close(replayed, full)


def test_replay_blocks_puts_the_blocks_back_on_error() -> None:
    loaded = tiny_model("tiny-gpt2")
    blocks = loaded.adapter.layers(loaded.model)
    originals = list(blocks)
    replaced = []

    def fail() -> None:
        replaced.append(blocks[0] is not originals[0])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), replay_blocks(blocks, LAYER, torch.zeros(1)):
        fail()
    assert replaced == [True]
    assert list(blocks) == originals


# flattened (batch · seq) positions of inputs(): one contiguous run, and a scattered set
KEEPS = {"contiguous": [2, 3, 4, 5, 6], "scattered": [0, 4, 7, 9]}


def mlp_and_hidden(family: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The MLP of block LAYER and the input it gets on inputs(): (2, 5, d)."""
    loaded = tiny_model(family)
    mlp = loaded.adapter.mlp(loaded.model, LAYER)
    with torch.no_grad(), capture(mlp) as seen:
        loaded.model(**inputs())
    assert seen.input is not None
    return mlp, seen.input


@pytest.mark.parametrize("kind", list(KEEPS))
@pytest.mark.parametrize("family", FAMILIES)
def test_only_at_runs_the_module_on_the_kept_positions_only(family: str, kind: str) -> None:
    mlp, hidden = mlp_and_hidden(family)
    keep = torch.tensor(KEEPS[kind])
    with torch.no_grad():
        full = mlp(hidden).flatten(0, 1)  # (10, d)
        with only_at({mlp: keep}), capture(mlp) as seen:
            partial = mlp(hidden)
    assert seen.input is not None
    assert seen.input.shape[:-1] == (1, len(keep)), "the module ran on positions not kept"
    assert partial.shape == hidden.shape[:-1] + full.shape[-1:]
    flat = partial.flatten(0, 1)
    torch.testing.assert_close(flat[keep], full[keep])
    dropped = torch.ones(len(flat), dtype=torch.bool)
    dropped[keep] = False
    assert not flat[dropped].any(), "a position not kept has a non-zero output"
    assert_no_hooks(mlp)


@pytest.mark.parametrize("kind", list(KEEPS))
def test_only_at_carries_gradients_of_the_kept_positions(kind: str) -> None:
    mlp, clean = mlp_and_hidden("tiny-llama")
    keep = torch.tensor(KEEPS[kind])
    grads = []
    for hooks in [{}, {mlp: keep}]:
        hidden = clean.clone().requires_grad_(True)
        with only_at(hooks):
            out = mlp(hidden).flatten(0, 1)
        (grad,) = torch.autograd.grad(out[keep].square().sum(), [hidden])
        grads.append(grad.flatten(0, 1))
    torch.testing.assert_close(grads[1], grads[0])
    assert grads[1][keep].abs().sum() > 0


def test_only_at_with_nothing_kept_gives_zeros() -> None:
    mlp, hidden = mlp_and_hidden("tiny-gpt2")
    with torch.no_grad(), only_at({mlp: torch.tensor([], dtype=torch.long)}):
        out = mlp(hidden)
    assert out.shape == hidden.shape
    assert not out.any()


def test_only_at_removes_its_hooks_on_error() -> None:
    loaded = tiny_model("tiny-gpt2")
    mlps = [loaded.adapter.mlp(loaded.model, i) for i in range(2)]
    with pytest.raises(RuntimeError, match="boom"), only_at({m: torch.tensor([0]) for m in mlps}):
        raise RuntimeError("boom")
    for mlp in mlps:
        assert_no_hooks(mlp)


@pytest.mark.parametrize(
    "keep", [torch.tensor([3, 1]), torch.tensor([1, 1]), torch.tensor([[0, 1]])], ids=str
)
def test_only_at_refuses_positions_not_sorted_and_distinct(keep: torch.Tensor) -> None:
    mlp, _ = mlp_and_hidden("tiny-gpt2")
    with pytest.raises(ValueError, match="sorted, distinct"), only_at({mlp: keep}):
        pass
    assert_no_hooks(mlp)


@pytest.mark.parametrize("kind", list(KEEPS))
def test_only_at_refuses_positions_past_the_input(kind: str) -> None:
    mlp, hidden = mlp_and_hidden("tiny-gpt2")
    keep = torch.tensor(KEEPS[kind]) + 8  # past the 10 positions of inputs()
    with (
        torch.no_grad(),
        pytest.raises(ValueError, match="input has 10"),
        only_at({mlp: keep}),
    ):
        mlp(hidden)
