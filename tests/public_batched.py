"""Shared by the tests of public batched editors under the harness (the original MEMIT code,
EasyEdit's MEMIT, EMMET and AlphaEdit): the weight change each wrote at a layer, how far it is
from our float64 reference in units of float32 storage rounding, and SPEC §7's key/residual
check on the keys and outputs the code computed itself."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from rome_fast.conform.patches import Captured
from rome_fast.edit.batch import hidden_at_subjects
from rome_fast.edit.batch_keys import compute_batch_keys, key_matrix
from rome_fast.edit.request import EditRequest
from rome_fast.model.loader import LoadedModel
from rome_fast.model.weights import weight_matrix
from tests.models import tiny_model

TEMPLATES = ["{}", "Once upon a time. {}", "He said hello. {}"]
LAYERS = (1, 2)
EPS32 = torch.finfo(torch.float32).eps
LAYOUT_FLOOR = 4 * EPS32  # relative to the largest entry: see check_memit_keys


def rounding_ratio(W1: Tensor, delta: Tensor, reference: Tensor) -> float:
    """The worst element of ``|delta − reference|`` in units of ``ε₃₂/2 (|W1| + |reference|)``:
    a code that solves in float64, casts ΔW to float32 and adds it to the float32 W0 rounds
    twice, so a correct one stays within 1 (plus the float64 solves' κ ε₆₄)."""
    bound = EPS32 / 2 * (W1.abs() + reference.abs())
    return ((delta - reference).abs() / bound).max().item()


def edited_weight(loaded: LoadedModel, layer: int) -> Tensor:
    """``W1`` at ``layer``'s edited module now, (d_out, d_in) float64."""
    return weight_matrix(loaded.adapter.edited_module(loaded.model, layer)).detach().double()


def check_memit_keys(family: str, requests: list[EditRequest], captured: Captured) -> None:
    """SPEC §7's mismatch on the code's own keys and outputs: the key written at the first
    edited layer is ½ bare-prompt key + ½ the mean over the prefixed templates (our ``"memit"``
    key choice), the residual's output H is the bare prompt's. Compared on an unedited copy
    (the first layer's keys and the residual before any write). Floor: our own keys in two
    batch layouts (together or one request at a time, right or left padding) differ by up to
    1.44 ε₃₂·max|K| (layers 1, 2); the public codes' by 1.21 and their H by 0; tolerance
    ``LAYOUT_FLOOR`` = 4 ε₃₂ of the largest entry (margin 2.8). The mismatch itself: the written
    key is ≈ 0.47 (relative) from the bare-prompt key at layer 1 of tiny GPT-2."""
    unedited = tiny_model(family)
    site = unedited.adapter.edited_site(unedited.model, LAYERS[0])
    keys = compute_batch_keys(unedited, site, requests, TEMPLATES)
    layer, public_K = captured.keys[0]  # (d_in, n) at the first edited layer
    assert layer == LAYERS[0]
    ours, bare = key_matrix(keys, TEMPLATES, "memit"), key_matrix(keys, TEMPLATES, "k_prompt")
    floor = LAYOUT_FLOOR * ours.abs().max().item()
    assert (public_K - ours).abs().max().item() <= floor
    assert (public_K - bare).norm().item() > 1e3 * floor * ours.numel() ** 0.5
    H = hidden_at_subjects(unedited, LAYERS[-1], requests)  # (d, n), bare prompts
    H_public = captured.outputs[0]
    assert (H_public - H).abs().max().item() <= LAYOUT_FLOOR * H.abs().max().item()


def check_packages_put_back(
    monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...], load: Callable[[], object]
) -> None:
    """Whatever held the packages of ``names`` in ``sys.modules`` before ``load()`` (here
    stand-ins for another checkout's modules ``names``) holds them after: two checkouts ship
    packages under the same names, and an adapter holds its own imports."""
    packages = {name.split(".", maxsplit=1)[0] for name in names}

    def holders() -> dict[str, object]:
        return {n: m for n, m in sys.modules.items() if n.split(".", maxsplit=1)[0] in packages}

    for name in names:
        monkeypatch.setitem(sys.modules, name, type(sys)(name))
    before = holders()
    load()
    after = holders()
    assert after.keys() == before.keys()
    assert all(after[name] is module for name, module in before.items())
