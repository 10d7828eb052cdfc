"""rome_ref checks the editor's numbers: every edit result's diagnostics (denominator, |Δ|,
relative residuals at both keys, key cosine) equal ``rome_ref.update_diagnostics`` on the same
inputs (W0, C, the result's k*, k_prompt, v*, the module's bias), for each variant, both
editors (fast and the naive yardstick) and tiny models of two module types."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rome_ref
from rome_fast.edit.editor import Editor
from rome_fast.edit.naive import NaiveEditor
from rome_fast.edit.request import EditRequest
from rome_fast.methods.rome.variants import BUILTIN_KEYS
from rome_fast.model.weights import module_bias, weight_matrix
from tests.models import REQUEST, TEMPLATES, fresh_model, key_dim, random_spd, tiny_hparams

LAYER = 1
EDITORS = {"fast": Editor, "naive": NaiveEditor}
# float32 edits against the float64 reference: C is well conditioned (random_spd), so the
# solve loses a digit or two at most. The residual at the inserted key is float32 rounding
# (~3e-7, the reference's ~1e-16), hence an absolute floor for the residuals only.
RTOL = 1e-5
RESIDUAL_FLOOR = 1e-6


def f64(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).numpy()


@pytest.mark.parametrize("impl", sorted(EDITORS))
@pytest.mark.parametrize("variant", sorted(BUILTIN_KEYS))
@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama"])  # Conv1D with bias, Linear
def test_edit_diagnostics_match_the_reference(family: str, variant: str, impl: str) -> None:
    loaded = fresh_model(family)
    C = random_spd(key_dim(loaded, LAYER))
    module = loaded.adapter.edited_module(loaded.model, LAYER)
    W0 = f64(weight_matrix(module))
    bias = module_bias(module)
    editor = EDITORS[impl](
        loaded, hparams=tiny_hparams(family, layer=LAYER), templates=TEMPLATES, stats=C
    )
    result = editor.edit(EditRequest(*REQUEST), variant)
    expected = rome_ref.update_diagnostics(
        W0,
        f64(C),
        f64(result.k_star),
        f64(result.k_prompt),
        f64(result.v_star),
        variant,
        bias=None if bias is None else f64(bias),
    )
    got = {
        name: getattr(result, name)
        for name in (
            "denominator",
            "delta_norm",
            "relative_residual_k_star",
            "relative_residual_k_prompt",
            "key_cosine",
        )
    }
    want = {
        name: pytest.approx(
            getattr(expected, name), rel=RTOL, abs=RESIDUAL_FLOOR if "residual" in name else 0
        )
        for name in got
    }
    assert got == want, (
        f"{impl} editor, {variant} on random:{family} layer {LAYER}, request {REQUEST}: "
        f"result {got} vs rome_ref.update_diagnostics {want}"
    )
