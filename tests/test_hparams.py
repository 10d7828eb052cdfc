"""Hyperparameters per model: the public values, and clear errors."""

from __future__ import annotations

import pytest

from rome_fast.hparams.defaults import HParams, hparams_for


@pytest.mark.parametrize(
    ("name", "layer", "clamp"),
    [
        ("gpt2-xl", 17, 4.0),
        ("random:gpt2-xl", 17, 4.0),
        ("openai-community/gpt2-xl", 17, 4.0),
        ("gpt-j-6b", 5, 4.0),
        ("EleutherAI/gpt-j-6b", 5, 4.0),
        ("gpt2-medium", 8, 3.0),
        ("gpt2-large", 12, 4.0),
        ("random:tiny-llama", 1, 4.0),
    ],
)
def test_public_values(name: str, layer: int, clamp: float) -> None:
    hp = hparams_for(name)
    assert (hp.layer, hp.clamp_norm_factor) == (layer, clamp)
    assert (hp.v_num_grad_steps, hp.v_lr, hp.v_weight_decay, hp.kl_factor) == (20, 0.5, 0.5, 0.0625)
    assert hp.context_template_schedule == ((5, 10), (10, 10))
    assert (hp.mom2_n_samples, hp.mom2_dtype) == (100_000, "float32")


def test_layer_override_and_unknown_models() -> None:
    assert hparams_for("gpt2-xl", layer=3).layer == 3
    assert hparams_for("/some/local/folder", layer=2) == HParams(layer=2)
    with pytest.raises(ValueError, match="layer="):
        hparams_for("/some/local/folder")


@pytest.mark.parametrize(
    "changes",
    [
        {"layer": -1},
        {"v_num_grad_steps": 0},
        {"v_lr": 0.0},
        {"kl_factor": -1.0},
        {"padding_side": "up"},
        {"v_precision": "fp16"},
    ],
)
def test_bad_values_raise(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(changes))):
        HParams(**{"layer": 1, **changes})  # type: ignore[arg-type]
