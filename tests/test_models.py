"""Random models: one seed, one model, whatever the dtype."""

from __future__ import annotations

import torch

from rome_fast.model.loader import random_model


def test_a_seed_gives_the_same_weights_in_every_dtype() -> None:
    fp32 = random_model("tiny-gpt2", seed=3).model.state_dict()
    fp64 = random_model("tiny-gpt2", seed=3).model.double().state_dict()
    assert fp32.keys() == fp64.keys()
    other = random_model("tiny-gpt2", seed=3, dtype=torch.float64).model.state_dict()
    for name, tensor in other.items():
        assert tensor.dtype == fp64[name].dtype, name
        torch.testing.assert_close(tensor, fp64[name], rtol=0, atol=0, msg=name)
