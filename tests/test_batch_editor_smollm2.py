"""The batched editor's four exactness checks on SmolLM2 (``Editor.edit_batch``), as
``test_batch_editor`` runs them on the tiny families, through the same functions
(``batch_editing``) and under the same bounds: the model's own keys of the sixteen FACTS at its
edited layer 6 (``model.layers.6.mlp.down_proj``, keys of dimension 1536, outputs 576), given
targets, and a seeded random C of the key dimension (``random_spd``; for AlphaEdit the
``low_rank_spd`` with half its spectrum below the null-space threshold), not the model's
statistics. The measured values (CPU, one thread, float32 model) are at each test; every
tiny-family bound covers SmolLM2 with a margin of at least 3×, so none is widened here."""

from __future__ import annotations

import pytest

from rome_fast.hparams.defaults import hparams_for
from rome_fast.model.loader import LoadedModel, load_model
from tests.batch_editing import (
    AGREES,
    BATCH_OF_ONE,
    INSERTED,
    METHODS,
    PRESERVED,
    batch_of_one_misfit,
    insert_sixteen,
    preserved_leak,
    reference_misfit,
    residuals,
)
from tests.models import require_smollm2

pytestmark = [pytest.mark.smollm2, pytest.mark.slow]

LAYER = hparams_for("smollm2").layer


@pytest.fixture(scope="module")
def smollm2() -> LoadedModel:
    """SmolLM2, loaded once; each check edits its own copy (``batch_editor``)."""
    require_smollm2()
    return load_model("smollm2")


def test_emmet_without_regularization_inserts_every_fact_of_sixteen(smollm2: LoadedModel) -> None:
    """Measured 2.5e-7 (2.1 ε₃₂) on SmolLM2, the largest of the 16 facts at k_prompt; the
    tiny families' 64 ε₃₂ is a 30× margin."""
    worst = max(residuals(insert_sixteen(smollm2, LAYER), "k_prompt"))
    assert worst <= INSERTED, worst


@pytest.mark.parametrize("method", METHODS)
def test_each_method_agrees_with_the_float64_reference(smollm2: LoadedModel, method: str) -> None:
    """Measured 1.2e-13 (519 ε₆₄) for AlphaEdit, 2.1e-14 (95 ε₆₄) for EMMET and 2.2e-14
    (97 ε₆₄) for MEMIT on SmolLM2; the tiny families' 4096 ε₆₄ is a 7.9× margin over the
    largest."""
    misfit = reference_misfit(smollm2, method, LAYER)
    assert misfit <= AGREES, misfit


def test_a_batch_of_one_under_emmet_equals_r_rome(smollm2: LoadedModel) -> None:
    """Measured 5.7e-7 (4.8 ε₃₂) on SmolLM2 (k* read in the batch's own pass, as on the tiny
    families); the tiny families' 16 ε₃₂ is a 3.4× margin. r-ROME's v* loop runs 3 iterations
    (``batch_editor``'s hyperparameters): the whole check took 5.4 s on one shared core."""
    misfit = batch_of_one_misfit(smollm2, LAYER)
    assert misfit <= BATCH_OF_ONE, misfit


def test_alphaedit_leaves_the_preserved_keys_outputs(smollm2: LoadedModel) -> None:
    """Measured 2.0e-16 (0.91 ε₆₄) on SmolLM2; the tiny families' 64 ε₆₄ is a 70× margin."""
    leak = preserved_leak(smollm2, (LAYER,))
    assert leak <= PRESERVED, leak
