"""Hyperparameters per model: the public values, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from rome_fast.hparams.defaults import HParams, StatsOptions, hparams_for
from rome_fast.stats.collect import collect_second_moment
from rome_fast.stats.corpus import from_texts
from rome_fast.stats.covariance import StatsSource, statistics_options
from tests.models import tiny_hparams
from tests.test_update_sites import V1_LOG


@pytest.mark.parametrize(
    ("name", "layer", "clamp"),
    [
        ("gpt2-xl", 17, 4.0),
        ("random:gpt2-xl", 17, 4.0),
        ("openai-community/gpt2-xl", 17, 4.0),
        ("gpt-j-6b", 5, 4.0),
        ("EleutherAI/gpt-j-6b", 5, 4.0),
        ("gpt2-medium", 8, 3.0),
        ("gpt2-large", 12, 4.0),
        ("random:tiny-llama", 1, 4.0),
    ],
)
def test_public_values(name: str, layer: int, clamp: float) -> None:
    hp = hparams_for(name)
    assert (hp.layer, hp.v_star.clamp_norm_factor) == (layer, clamp)
    assert (
        hp.v_star.num_grad_steps,
        hp.v_star.lr,
        hp.v_star.weight_decay,
        hp.v_star.kl_factor,
    ) == (20, 0.5, 0.5, 0.0625)
    assert hp.v_star.context_template_schedule == ((5, 10), (10, 10))
    assert (hp.stats.n_samples, hp.stats.dtype) == (100_000, "float32")


def test_layer_override_and_unknown_models() -> None:
    assert hparams_for("gpt2-xl", layer=3).layer == 3
    assert hparams_for("/some/local/folder", layer=2) == HParams(layer=2)
    with pytest.raises(ValueError, match="layer="):
        hparams_for("/some/local/folder")


@pytest.mark.parametrize(
    "changes",
    [
        {"layer": -1},
        {"v_num_grad_steps": 0},
        {"v_lr": 0.0},
        {"kl_factor": -1.0},
        {"padding_side": "up"},
        {"v_precision": "fp16"},
    ],
)
def test_bad_values_raise(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(changes))):
        HParams(layer=1).replace(**changes)


def test_the_record_is_the_flat_form_earlier_versions_wrote() -> None:
    """Runs' identities (config.json ``hparams``) and edit logs written before the v* and
    statistics options were grouped hold the flat ``dataclasses.asdict`` of the old HParams:
    the fixture log was written by that code with ``tiny_hparams("tiny-gpt2")``. The record
    must equal it, so that such runs resume and such logs compare."""
    written_before = json.loads((V1_LOG / "edits.json").read_text())["hparams"]
    record = json.loads(json.dumps(tiny_hparams("tiny-gpt2").as_record()))
    assert record == written_before


def test_replace_takes_the_public_names_and_the_group_fields() -> None:
    hp = HParams(layer=1).replace(v_lr=0.1, mom2_n_samples=7, layer=2, mom2_adjustment=False)
    assert (hp.layer, hp.mom2_adjustment, hp.v_star.lr, hp.stats.n_samples) == (2, False, 0.1, 7)
    assert hp.replace(stats=StatsOptions(dtype="float64")).stats == StatsOptions(dtype="float64")
    with pytest.raises(ValueError, match="v_num_grad_steps must be >= 1"):
        hp.replace(v_num_grad_steps=0)
    with pytest.raises(TypeError, match="no_such_option"):
        hp.replace(no_such_option=1)


def test_every_statistics_option_reaches_the_collection_keywords() -> None:
    """``StatsOptions`` and the user's ``StatsSource`` decide every keyword of
    ``layer_stats``: each changed field changes its keyword (the statistics cache's key)."""
    base = statistics_options(StatsOptions(), StatsSource())
    assert (base["n_samples"], base["dtype"], base["max_length"]) == (100_000, torch.float32, None)
    changed = statistics_options(
        StatsOptions(n_samples=5, dtype="float64", max_length=12), StatsSource()
    )
    assert (changed["n_samples"], changed["dtype"], changed["max_length"]) == (
        5,
        torch.float64,
        12,
    )
    corpus = from_texts(["a b c"])
    collect = collect_second_moment
    source = StatsSource(corpus=corpus, npz_path="c.npz", n_samples=3, collect=collect)
    given = statistics_options(StatsOptions(n_samples=5), source)
    assert (given["corpus"], given["npz_path"], given["n_samples"], given["collect"]) == (
        corpus,
        "c.npz",
        3,
        collect,
    )
    with pytest.raises(ValueError, match="at least one document"):
        statistics_options(StatsOptions(), StatsSource(n_samples=0))
