"""The floor of each numeric property on one case: the value a correct float32 editor reaches
there, measured against the float64 truth of the same case.

The truth is our editor's keys and v* on a float64 copy of the model (same templates, C,
hyperparameters, seed). The correct float32 editors are our update in float32 on our float32
keys and v*, with C⁻¹ applied two legitimate ways (triangular solves against the Cholesky
factor, as ours does, and an explicit float32 inverse, as the public code does), for each
ROME variant, written into the float32 weight. So the floor holds the float32 rounding of
the update and of the weight write, the conditioning of C, and the drift of a float32 v*
away from the float64 one over the Adam steps (about 4e-5 of ‖v*‖ after 20 steps on the tiny
models: the size by which the public code's v* differs from ours). That drift is sampled twice,
by our loop and by the public code's flow (``rome_fast.edit.naive``: full forward passes, full
vocabulary): ``essence_drift`` reads it along one direction, where one sample can be small by
chance (the naive loop's read 24× ours on a tiny-neox case, at the same ‖v*‖ distance).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools

import numpy as np
import torch
from torch import Tensor

from rome_fast.conform.ours import editor_for
from rome_fast.conform.properties import NUMERIC, VARIANTS, Observation, measure
from rome_fast.conform.protocol import ConformInputs
from rome_fast.edit.naive import naive_value
from rome_fast.methods.rome.update import rank_one_update
from rome_fast.model.loader import LoadedModel
from rome_fast.solve.explicit_inverse import ExplicitInverse

# A floor below float32's resolution would make a bound that rounding alone exceeds.
EPS32 = float(np.finfo(np.float32).eps)


def in_dtype(loaded: LoadedModel, dtype: torch.dtype) -> LoadedModel:
    """A copy of ``loaded`` with every parameter and buffer in ``dtype``."""
    model = copy.deepcopy(loaded.model).to(dtype)
    return LoadedModel(model, loaded.tokenizer, loaded.adapter, loaded.name)


@dataclasses.dataclass(frozen=True)
class Truth:
    """Keys and v* of one case from a float64 run (float64 arrays), and v* of the public
    code's flow in float32 (a second correct float32 v*, float64 array)."""

    k_star: np.ndarray
    k_prompt: np.ndarray
    v_star: np.ndarray
    naive_v_star: np.ndarray


def float64_truth(inputs: ConformInputs) -> Truth:
    """Our keys and v* on a float64 copy of the model as it is now, and the naive flow's v* on
    the model itself."""
    twin = in_dtype(inputs.loaded, torch.float64)
    site = twin.adapter.edited_site(twin.model, inputs.layer)
    twin_inputs = dataclasses.replace(inputs, loaded=twin, site=site, C=inputs.C.double())
    prepared = editor_for(twin_inputs).prepare(inputs.request)

    def f64(x: Tensor) -> np.ndarray:
        return x.detach().to("cpu", torch.float64).numpy()

    naive = naive_value(
        inputs.loaded, inputs.site, inputs.request, inputs.templates, inputs.hparams.v_star
    )
    return Truth(
        f64(prepared.keys.k_star),
        f64(prepared.keys.k_prompt),
        f64(prepared.value.v_star),
        f64(naive.v_star),
    )


def _float32_delta(
    obs: Observation, v_star: np.ndarray, variant: str, explicit_inverse: bool
) -> np.ndarray:
    """W1 − W0 of a correct float32 editor: the update on our float32 keys and a float32
    ``v_star``, written into the float32 weight."""

    def f32(x: np.ndarray) -> Tensor:
        return torch.from_numpy(x).float()

    W0, C = f32(obs.W0), f32(obs.C)
    delta = rank_one_update(
        W0,
        ExplicitInverse(C) if explicit_inverse else C,
        f32(obs.k_star),
        f32(obs.k_prompt),
        f32(v_star),
        variant,
        bias=None if obs.bias is None else f32(obs.bias),
    )
    return ((W0 + delta).double() - W0.double()).numpy()


def measured_floors(obs: Observation, truth: Truth) -> dict[str, float]:
    """Per numeric property, the largest value a correct float32 editor reaches on this case
    (over the three variants, wherever the property is required, both ways of C⁻¹ and both
    float32 v*)."""
    seen: dict[str, list[float]] = {name: [EPS32] for name in NUMERIC}
    for v_star, variant, explicit_inverse in itertools.product(
        (obs.v_star, truth.naive_v_star), VARIANTS, (False, True)
    ):
        correct = dataclasses.replace(
            obs,
            delta=_float32_delta(obs, v_star, variant, explicit_inverse),
            k_star=truth.k_star,
            k_prompt=truth.k_prompt,
            v_star=truth.v_star,
            floors=None,
            failure=None,
        )
        for m in measure(correct, variant)[1]:
            if m.name in NUMERIC and m.passed is not None:
                seen[m.name].append(m.value)
    return {name: max(values) for name, values in seen.items()}
