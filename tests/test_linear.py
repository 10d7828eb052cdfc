"""oneDNN linear layers: float32 results and gradients of torch's own, routed only inside the
block, and never under autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rome_fast.edit.naive import naive_value
from rome_fast.edit.value import compute_v_star
from rome_fast.model import linear
from rome_fast.model.linear import onednn_available, onednn_linear, onednn_linears
from tests.models import EDIT, FAMILIES, TEMPLATES, at, tiny_hparams, tiny_model

pytestmark = pytest.mark.skipif(
    not onednn_available(), reason="this torch build has no oneDNN linear operator"
)
IDS = torch.tensor([[464, 412, 733, 9096, 318], [1212, 318, 257, 1332, 13]])
SHAPES = {"tokens": (37,), "batch x seq": (3, 5)}  # the input's leading dimensions


def operands(
    lead: tuple[int, ...], transposed: bool, bias: bool, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """x (*lead, 48), weight (40, 48) (a transposed view when ``transposed``, as GPT-2's
    Conv1D stores it), bias (40,) or None."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, 48, generator=g)
    weight = torch.randn(48, 40, generator=g).T if transposed else torch.randn(40, 48, generator=g)
    return x, weight, torch.randn(40, generator=g) if bias else None


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("lead", list(SHAPES.values()), ids=list(SHAPES))
def test_forward_equals_float64(lead: tuple[int, ...], transposed: bool, bias: bool) -> None:
    x, weight, b = operands(lead, transposed, bias)
    exact = F.linear(x.double(), weight.double(), None if b is None else b.double())
    ours = onednn_linear(x, weight, b)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("transposed", [False, True])
def test_gradients_equal_torchs(transposed: bool) -> None:
    grads = []
    for fn in (onednn_linear, F.linear):
        x, weight, b = operands((3, 5), transposed, True)
        assert b is not None
        x, weight, b = (t.clone().requires_grad_(True) for t in (x, weight, b))
        out = fn(x, weight, b)
        grads.append(torch.autograd.grad(out.square().sum(), [x, weight, b]))
    for ours, torchs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, torchs, rtol=1e-5, atol=1e-5)


def test_only_the_input_gradient_when_the_weight_is_frozen() -> None:
    x, weight, b = operands((7,), False, True)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(onednn_linear(x, weight, b).sum(), [x])
    torch.testing.assert_close(grad, weight.sum(0).expand(7, -1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_routed_model_gives_its_own_logits(family: str) -> None:
    model = tiny_model(family).model
    with torch.no_grad():
        plain = model(input_ids=IDS).logits
        with onednn_linears(model, force=True) as routed:
            assert routed
            inside = [m for m in model.modules() if "forward" in m.__dict__]
            assert inside, "no linear layer was routed"
            ours = model(input_ids=IDS).logits
    assert not [m for m in model.modules() if "forward" in m.__dict__], "a forward was left"
    torch.testing.assert_close(ours, plain, rtol=1e-4, atol=1e-5)


def test_every_forward_is_put_back_on_error() -> None:
    model = tiny_model("tiny-gpt2").model
    with pytest.raises(RuntimeError, match="boom"), onednn_linears(model, force=True):
        raise RuntimeError("boom")
    assert not [m for m in model.modules() if "forward" in m.__dict__]


def test_nested_blocks_keep_the_outer_routing() -> None:
    model = tiny_model("tiny-gpt2").model
    with onednn_linears(model, force=True):
        routed = [m for m in model.modules() if "forward" in m.__dict__]
        with onednn_linears(model, force=True) as inner:
            assert not inner  # every layer is already routed
        assert [m for m in model.modules() if "forward" in m.__dict__] == routed
    assert not [m for m in model.modules() if "forward" in m.__dict__]


def test_a_linear_with_a_forward_of_its_own_is_left_alone() -> None:
    class Scaled(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    model = torch.nn.Sequential(Scaled(4, 3), torch.nn.Linear(3, 2))
    x = torch.randn(5, 4)
    expected = model(x)
    with torch.no_grad(), onednn_linears(model, force=True):
        assert "forward" not in model[0].__dict__
        assert "forward" in model[1].__dict__
        torch.testing.assert_close(model(x), expected)


def test_ieee_float32_inside_whatever_the_process_allows() -> None:
    settings = torch.backends.mkldnn.matmul  # type: ignore[attr-defined]  # torch ≥ 2.9, unstubbed
    before = settings.fp32_precision
    settings.fp32_precision = "bf16"
    try:
        with onednn_linears(tiny_model("tiny-gpt2").model, force=True):
            assert settings.fp32_precision == "ieee"
        assert settings.fp32_precision == "bf16"
    finally:
        settings.fp32_precision = before


def test_choosing_leaves_the_global_random_state_alone() -> None:
    linear._measured_onednn_is_faster.cache_clear()
    before = torch.random.get_rng_state()
    linear.onednn_is_faster()
    assert torch.equal(torch.random.get_rng_state(), before)


def test_nothing_is_routed_when_not_chosen() -> None:
    model = tiny_model("tiny-gpt2").model
    with onednn_linears(model, force=False) as routed:
        assert not routed
        assert not [m for m in model.modules() if "forward" in m.__dict__]


def test_under_autocast_a_layer_runs_its_own_forward() -> None:
    model = tiny_model("tiny-llama").model
    with (
        torch.no_grad(),
        onednn_linears(model, force=True),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):
        out = model.get_submodule("model.layers.0.mlp.down_proj")(torch.randn(2, 160))
    assert out.dtype == torch.bfloat16


def test_forcing_it_without_the_operator_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linear, "onednn_available", lambda: False)
    with (
        pytest.raises(RuntimeError, match="no oneDNN linear operator"),
        onednn_linears(tiny_model("tiny-gpt2").model, force=True),
    ):
        pass


@pytest.mark.parametrize("routed", [True, False])
@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama"])
def test_v_star_is_the_reference_loops_either_way(
    family: str, routed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(linear, "onednn_is_faster", lambda: routed)
    loaded = tiny_model(family)
    hp = tiny_hparams(family, v_num_grad_steps=4)
    args = (*at(loaded, 1), EDIT, TEMPLATES, hp.v_star)
    fast, ref = compute_v_star(*args), naive_value(*args)
    assert fast.loss_trace == pytest.approx(ref.loss_trace, rel=1e-4)
    error = float((fast.v_star - ref.v_star).norm() / ref.v_star.norm())
    assert error <= 1e-4, f"‖v*_fast − v*_ref‖ / ‖v*_ref‖ = {error:.3g} (oneDNN: {routed})"


@pytest.mark.parametrize(("value", "choice"), [("1", True), ("0", False)])
def test_the_environment_pins_the_choice_without_measuring(
    value: str, choice: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(linear.ONEDNN_ENV, value)
    monkeypatch.setattr(linear, "_measured_onednn_is_faster", lambda: not choice)
    assert linear.onednn_is_faster() is choice


def test_a_bad_environment_choice_names_the_allowed_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(linear.ONEDNN_ENV, "yes")
    with pytest.raises(ValueError, match=r"must be 1 .* or 0"):
        linear.onednn_is_faster()
