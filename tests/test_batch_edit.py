"""n facts over two layers of tiny models with MEMIT's schedule (``rome_fast.edit.batch``):
exact solves (EMMET, λₑ = 0) land the last layer's hidden states on the targets when the key
is the bare prompt's, where the residual is measured; the public key choice misses; atomic."""

from __future__ import annotations

import pytest
import torch

from rome_fast.edit.batch import LayerSolve, hidden_at_subjects, write_batch
from rome_fast.edit.batch_keys import KeyChoice
from rome_fast.methods.emmet.update import EmmetHParams, emmet_covariance, emmet_factors
from rome_fast.model.loader import LoadedModel
from rome_fast.solve.batch import SingularBatchError
from rome_fast.solve.low_rank import Factors
from tests.models import FAMILIES, TEMPLATES, fresh_model, key_dim, random_spd, weights_of
from tests.test_batch_keys import REQUESTS

LAYERS = (0, 1)
HPARAMS = EmmetHParams(layers=LAYERS, mom2_update_weight=1.0, emmet_lambda=0.0)


def exact_solves(loaded: LoadedModel) -> dict[int, LayerSolve]:
    """EMMET with λₑ = 0 (exact insertion) at each layer, C a random SPD matrix per layer."""

    def solve_at(layer: int) -> LayerSolve:
        cov = emmet_covariance(random_spd(key_dim(loaded, layer), seed=layer), HPARAMS)
        return lambda K, R: emmet_factors(cov, K, R, HPARAMS)[0]

    return {layer: solve_at(layer) for layer in LAYERS}


def targets_for(loaded: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(H₀, Z): the unedited hidden states (d, n) and targets one typical norm away."""
    H0 = hidden_at_subjects(loaded, LAYERS[-1], REQUESTS)
    noise = torch.randn(H0.shape, generator=torch.Generator().manual_seed(0))
    return H0, H0 + noise * H0.norm(dim=0) / H0.shape[0] ** 0.5


def miss(family: str, choice: KeyChoice) -> float:
    """‖H − Z‖ / ‖Z − H₀‖ after the batch: the part of the change the edit did not make."""
    loaded = fresh_model(family)
    H0, Z = targets_for(loaded)
    write_batch(loaded, REQUESTS, TEMPLATES, exact_solves(loaded), Z, choice)
    H = hidden_at_subjects(loaded, LAYERS[-1], REQUESTS)
    return float((H - Z).norm() / (Z - H0).norm())


@pytest.mark.parametrize("family", FAMILIES)
def test_bare_prompt_keys_land_on_the_targets(family: str) -> None:
    # measured at most 2.0e-7 (≈ 1.7 ε₃₂: float32 weights and forwards); 16 ε₃₂, a 9× margin
    assert miss(family, "k_prompt") <= 16 * torch.finfo(torch.float32).eps


@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama"])
def test_the_public_key_choice_misses_the_targets(family: str) -> None:
    """½ bare + ½ prefix mean is inserted while the residual is read at the bare prompt: the
    batched form of ROME's two-key asymmetry (measured 6.0e-2 on tiny-gpt2, 9.6e-2 on
    tiny-llama, against 1e-7 for the bare key)."""
    assert miss(family, "memit") > 1e3 * miss(family, "k_prompt")


def test_a_failing_layer_leaves_the_model_exactly_as_it_was() -> None:
    loaded = fresh_model("tiny-gpt2")
    before = weights_of(loaded)
    solves = exact_solves(loaded)

    def refuse(*_: torch.Tensor) -> Factors:
        raise SingularBatchError("facts 0 and 2 share a key")

    solves[LAYERS[-1]] = refuse  # the last layer fails after the first was written
    with pytest.raises(SingularBatchError, match="facts 0 and 2"):
        write_batch(loaded, REQUESTS, TEMPLATES, solves, targets_for(loaded)[1], "k_prompt")
    after = weights_of(loaded)
    assert all(torch.equal(after[name], before[name]) for name in before)


def test_the_update_names_each_written_site_in_order() -> None:
    loaded = fresh_model("tiny-gpt2")
    update = write_batch(
        loaded, REQUESTS, TEMPLATES, exact_solves(loaded), targets_for(loaded)[1], "k_prompt"
    ).update
    assert update.layers == LAYERS
    assert [site.factors.rank for site in update] == [len(REQUESTS)] * len(LAYERS)
    for site in update:
        assert site.module_name == loaded.adapter.edited_site(loaded.model, site.layer).module_name
