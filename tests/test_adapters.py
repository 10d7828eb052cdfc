"""Adapters: the SPEC §1 module per family, and that its output is the MLP's output."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from rome_fast.model.adapters import adapter_for
from rome_fast.model.hooks import capture
from tests.models import FAMILIES, tiny_model

SPEC_TABLE = {
    "tiny-gpt2": ("transformer.h.2.mlp.c_proj", Conv1D, True),
    "tiny-gptj": ("transformer.h.2.mlp.fc_out", nn.Linear, True),
    "tiny-neox": ("gpt_neox.layers.2.mlp.dense_4h_to_h", nn.Linear, True),
    "tiny-llama": ("model.layers.2.mlp.down_proj", nn.Linear, False),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_edited_module_is_the_spec_one(family: str) -> None:
    loaded = tiny_model(family)
    name, kind, has_bias = SPEC_TABLE[family]
    assert loaded.adapter.edited_module_name(2) == name
    module = loaded.adapter.edited_module(loaded.model, 2)
    assert module is loaded.model.get_submodule(name)
    assert type(module) is kind
    assert (getattr(module, "bias", None) is not None) == has_bias
    assert loaded.adapter.n_layers(loaded.model) == 4


@pytest.mark.parametrize("family", FAMILIES)
def test_edited_module_output_is_the_mlp_output(family: str) -> None:
    # value.py adds δ to the edited module's output, the public code to the MLP's
    loaded = tiny_model(family)
    mlp = loaded.model.get_submodule(loaded.adapter.mlp_module_name(1))
    proj = loaded.adapter.edited_module(loaded.model, 1)
    with (
        torch.no_grad(),
        capture(mlp, output=True) as mlp_seen,
        capture(proj, output=True) as proj_seen,
    ):
        loaded.model(input_ids=torch.tensor([[464, 412, 733, 9096]]))
    assert mlp_seen.output is not None
    assert proj_seen.output is not None
    assert torch.equal(mlp_seen.output, proj_seen.output)


@pytest.mark.parametrize("layer", [-1, 4])
def test_layer_out_of_range_raises(layer: int) -> None:
    loaded = tiny_model("tiny-neox")
    with pytest.raises(ValueError, match=r"out of range.*0\.\.3"):
        loaded.adapter.edited_module(loaded.model, layer)


def test_unsupported_model_type_raises() -> None:
    with pytest.raises(ValueError, match="unsupported model type"):
        adapter_for(nn.Linear(2, 2))
