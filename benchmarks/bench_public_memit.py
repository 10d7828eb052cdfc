"""The original MEMIT code (``memit.apply_memit_to_model``, run by ``rome_fast.conform.
public_memit`` with "cuda" mapped to the model's device) against our ``Editor.edit_batch(
method="memit")`` on the same n facts, model, layers, templates, C and target optimization
settings, at GPT-2-medium shapes with seeded random weights; seconds per fact, the public
code the group's baseline. The MEMIT checkout comes from ``$ROME_ANCHORS_DIR`` (else
``../shared/anchors``); without it the benchmark skips."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from torch import Tensor

from benchmarks.conftest import SEED, synthetic_second_moment
from rome_fast.conform.public_memit import MemitInputs, PublicMemit
from rome_fast.edit.editor import Editor
from rome_fast.edit.request import EditRequest
from rome_fast.hparams.defaults import HParams, hparams_for
from rome_fast.methods.memit.update import MemitHParams
from rome_fast.model.loader import LoadedModel, random_model
from tests.anchors import anchors_present, anchors_root

N_FACTS = 4
STEPS = 5  # 4 Adam steps per optimization, as the v* benchmark (both sides the same)
MODEL = "gpt2-medium"
# the public code's own template shape: the bare prompt and five short prefixes
TEMPLATES = [
    "{}",
    "The first thing. {}",
    "Therefore, we went. {}",
    "Because of it. {}",
    "I said that. {}",
    "You know the way. {}",
]
_PROMPTS = ("{} is located in", "The native language of {} is", "{} works in the field of")
_SUBJECTS = ("The Eiffel Tower", "Danielle Darrieux", "Toyota", "Miles Davis")
_TARGETS = ("Rome", "English", "physics", "Lyon")
FACTS = [
    EditRequest(_PROMPTS[i % 3], _SUBJECTS[i % 4], _TARGETS[(i + 1) % 4]) for i in range(N_FACTS)
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def medium() -> LoadedModel:
    return random_model(MODEL, seed=SEED)


@pytest.mark.parametrize("impl", ["public", "batched"])
def test_public_memit_vs_edit_batch(
    run_bench: Callable[..., Any], medium: LoadedModel, impl: str
) -> None:
    if not anchors_present():
        pytest.skip(f"no MEMIT checkout under {anchors_root()}")
    hparams = hparams_for(f"random:{MODEL}").replace(v_num_grad_steps=STEPS)
    layers = tuple(range(hparams.layer - 2, hparams.layer + 1))  # three layers ending at ROME's
    method = MemitHParams(layers=layers, mom2_update_weight=20000.0)  # the public GPT2-XL λ
    d_in = {layer: medium.adapter.edited_site(medium.model, layer).d_in for layer in layers}
    C = {layer: synthetic_second_moment(d_in[layer], layer) for layer in layers}
    timed = (
        _public(medium, hparams, method, C)
        if impl == "public"
        else _ours(medium, hparams, method, C)
    )
    run_bench(
        timed,
        group=f"MEMIT, {N_FACTS} facts, random:{MODEL}, {len(layers)} layers, {STEPS} iterations",
        impl=impl,
        rounds=1,
        warmup_rounds=0,
        facts=N_FACTS,
        layers=list(layers),
    )


def _public(
    loaded: LoadedModel, hparams: HParams, method: MemitHParams, C: dict[int, Tensor]
) -> Callable[[], None]:
    """One batch by the public code, then its own revert."""
    public = PublicMemit(anchors_root() / "memit")
    inputs = MemitInputs(loaded, FACTS, TEMPLATES, C, hparams, method, seed=SEED)

    def timed() -> None:
        public.edit(inputs)
        public.revert()

    return timed


def _ours(
    loaded: LoadedModel, hparams: HParams, method: MemitHParams, C: dict[int, Tensor]
) -> Callable[[], None]:
    """One batch by ``Editor.edit_batch``, then ``restore``."""
    editor = Editor(loaded, hparams=hparams, templates=TEMPLATES, stats=lambda _m, layer: C[layer])

    def timed() -> None:
        editor.edit_batch(FACTS, "memit", method_hparams=method)
        editor.restore()

    return timed
