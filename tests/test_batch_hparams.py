"""Per-model hyperparameters of the batched methods (``rome_fast.hparams.batched``)."""

from __future__ import annotations

import pytest

from rome_fast.hparams.batched import (
    METHODS,
    MethodHParams,
    method_hparams_at,
    method_hparams_for,
)
from rome_fast.hparams.defaults import hparams_for
from rome_fast.methods.alphaedit.update import PUBLIC as ALPHAEDIT
from rome_fast.methods.emmet.update import PUBLIC as EMMET
from rome_fast.methods.memit.update import PUBLIC as MEMIT

PUBLIC: dict[str, dict[str, MethodHParams]] = {
    "memit": dict(MEMIT),
    "emmet": dict(EMMET),
    "alphaedit": dict(ALPHAEDIT),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("model", "public"), [("random:gpt2-xl", "gpt2-xl"), ("gpt-j-6b", "gpt-j-6B")]
)
def test_gpt2_xl_and_gpt_j_get_the_public_files_values(
    method: str, model: str, public: str
) -> None:
    assert method_hparams_for(method, model) == PUBLIC[method][public]


@pytest.mark.parametrize("model", ["smollm2", "random:tiny-llama"])
def test_other_models_edit_at_or_up_to_romes_layer(model: str) -> None:
    rome = hparams_for(model).layer
    assert method_hparams_for("emmet", model).layers == (rome,)
    for method in ("memit", "alphaedit"):
        layers = method_hparams_for(method, model).layers
        assert layers[-1] == rome
        assert layers == tuple(range(max(0, rome - 4), rome + 1))  # five, or from layer 0


def test_a_given_layer_moves_the_window_even_on_a_public_model() -> None:
    assert method_hparams_for("memit", "gpt2-xl", layer=10).layers == (6, 7, 8, 9, 10)


def test_an_unknown_method_or_model_names_the_fix() -> None:
    with pytest.raises(ValueError, match="choose one of memit, emmet, alphaedit"):
        method_hparams_for("rome", "smollm2")
    with pytest.raises(ValueError, match="pass layer="):
        method_hparams_for("memit", "some/unknown-model")


def test_an_editor_at_another_layer_places_the_methods_there() -> None:
    """The model's own ROME layer keeps the per-model (public) values; another layer, or a
    model without per-model values, places the layers at the editor's layer."""
    assert method_hparams_at("memit", "gpt2-xl", 17) == method_hparams_for("memit", "gpt2-xl")
    assert method_hparams_at("memit", "gpt2-xl", 10).layers == (6, 7, 8, 9, 10)
    assert method_hparams_at("emmet", "some/local-model", 3).layers == (3,)
