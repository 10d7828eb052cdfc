"""Hooks: they capture, add out of place, stop the forward, and always remove themselves."""

from __future__ import annotations

import pytest
import torch

from rome_fast.hooks import StopForward, add_to_output, capture, replay_blocks, run_until
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
