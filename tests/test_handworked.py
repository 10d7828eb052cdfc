"""The hand-worked CounterFact fixture (fixtures/handworked/counterfact-metrics.json): every
metric, S, the entropies, the collapse flags and gate decisions, worked out in the file."""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from rome_fast.eval.collapse import collapse_reasons
from rome_fast.eval.config import RunConfig
from rome_fast.eval.gates import compare
from rome_fast.eval.score import mean_token_nll
from rome_fast.model.tokens import target_token_ids
from rome_ref import metrics as ref
from tests.models import tiny_model

FIXTURE = (
    Path(__file__).resolve().parents[1] / "fixtures" / "handworked" / "counterfact-metrics.json"
)


@cache
def fixture() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text())
    return data


def pairs(scores: dict[str, Any]) -> tuple[tuple[list[float], list[float]], ...]:
    return tuple(
        (scores[g]["nll_new"], scores[g]["nll_true"])
        for g in ("rewrite", "paraphrase", "neighborhood")
    )


def record_ids() -> list[str]:
    return [r["name"] for r in fixture()["records"]]


@pytest.mark.parametrize("name", record_ids())
def test_record_metrics_by_hand(name: str) -> None:
    record = next(r for r in fixture()["records"] if r["name"] == name)
    got = ref.record_metrics(*pairs(record["scores"]))
    for metric, expected in record["expected"].items():
        assert got[metric] == pytest.approx(expected, abs=1e-12), (
            f"{name}: {metric} = {got[metric]}, by hand {expected}; {record['working']}"
        )


@pytest.mark.parametrize("name", record_ids())
def test_fixture_nlls_are_its_probabilities(name: str) -> None:
    """The file's own consistency: each NLL is −ln of the probabilities written beside it."""
    record = next(r for r in fixture()["records"] if r["name"] == name)
    for group, scores in record["scores"].items():
        if "token_p" in record:
            token_p = record["token_p"][group]
            p_new = [math.exp(-np.mean(-np.log(t))) for t in token_p["new"]]
            p_true = [math.exp(-np.mean(-np.log(t))) for t in token_p["true"]]
        else:
            p_new, p_true = scores["p_new"], scores["p_true"]
        np.testing.assert_allclose(np.exp(-np.asarray(scores["nll_new"])), p_new, rtol=1e-12)
        np.testing.assert_allclose(np.exp(-np.asarray(scores["nll_true"])), p_true, rtol=1e-12)


def test_record_without_paraphrases_is_refused() -> None:
    (refused,) = fixture()["refused"]
    with pytest.raises(ValueError, match=refused["error"]):
        ref.record_metrics(*pairs(refused["scores"]))


def hand_table() -> dict[str, float]:
    return ref.aggregate(ref.record_metrics(*pairs(r["scores"])) for r in fixture()["records"])


def test_table_and_score_by_hand() -> None:
    table = fixture()["table"]
    assert table["records"] == record_ids()
    got = hand_table()
    for metric, expected in table["expected"].items():
        assert got[metric] == pytest.approx(expected, abs=1e-9), (
            f"{metric} = {got[metric]}, by hand {expected}; {table['working']}"
        )


@pytest.mark.parametrize("case", fixture()["generation_entropy"], ids=lambda c: str(c["texts"]))
def test_generation_entropy_by_hand(case: dict[str, Any]) -> None:
    got = ref.generation_entropy(case["texts"])
    assert got == pytest.approx(case["expected"], abs=1e-12), case["working"]


@pytest.mark.parametrize("case", fixture()["unigram_entropy"], ids=lambda c: str(c["token_ids"]))
def test_unigram_entropy_by_hand(case: dict[str, Any]) -> None:
    got = ref.normalized_unigram_entropy(case["token_ids"], case["vocab_size"])
    assert got == pytest.approx(case["expected"], abs=1e-12), case["working"]


@pytest.mark.parametrize(
    "case", fixture()["collapse"]["cases"], ids=lambda c: f"{c['delta_norm']}-{c['entropy']}"
)
def test_collapse_flag_by_hand(case: dict[str, Any]) -> None:
    rules = fixture()["collapse"]
    cfg = RunConfig(
        model="m",
        data="d",
        collapse_factor=rules["factor"],
        collapse_min_history=rules["min_history"],
    )
    reasons = collapse_reasons(
        case["delta_norm"], case["history"], case["entropy"], case["threshold"], cfg
    )
    assert bool(reasons) == case["flag"], f"{reasons}; by hand: {case['working']}"


@pytest.mark.parametrize(
    "case",
    fixture()["gates"]["cases"],
    ids=lambda c: f"{c['direction']}-{c['metric']}-{c['baseline']}",
)
def test_gate_decision_by_hand(case: dict[str, Any]) -> None:
    summary = {"model": "m", "n_cases": 3, "results": {"single": {"r-rome": hand_table()}}}
    baseline = {
        "name": "hand",
        "model": "m",
        "mode": "single",
        "n_cases": 3,
        "tolerance": {"default": case["tolerance"]},
        "direction": {"default": case["direction"]},
        "variants": {"r-rome": {case["metric"]: case["baseline"]}},
    }
    result = compare(summary, baseline)
    assert result.passed == case["passed"], f"{result.report()}\nby hand: {case['working']}"


class ByPosition(nn.Module):
    """A language model whose next-token distribution depends only on the position:
    ``probs[t]`` (T, V) after the token at position t."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.log_probs = nn.Parameter(probs.log(), requires_grad=False)

    def forward(self, position_ids: torch.Tensor, **_: Any) -> Any:
        return SimpleNamespace(logits=self.log_probs[position_ids])  # (B, T, V)


def test_multi_token_target_scores_the_mean_token_nll() -> None:
    """The fixture's multi-token rewrite target: tokens at p .5, .5, .125 score 5/3 ln 2
    through ``mean_token_nll`` (a mean over tokens, not a sum, not the first token)."""
    tokenizer = tiny_model("tiny-gpt2").tokenizer
    record = next(r for r in fixture()["records"] if "token_p" in r)
    (token_p,) = record["token_p"]["rewrite"]["new"]
    prompt, target = "The mother tongue of Danielle is", "Darrieux"
    ids = target_token_ids(tokenizer, target)
    assert len(ids) == len(token_p), f"{target!r} is {len(ids)} tokens, the fixture has {token_p}"
    first = len(tokenizer(prompt)["input_ids"]) - 1  # the position that predicts ids[0]
    vocab = int(tokenizer.vocab_size)
    probs = torch.full((first + len(ids) + 1, vocab), 1 / vocab, dtype=torch.float64)
    for j, (token, p) in enumerate(zip(ids, token_p, strict=True)):
        probs[first + j] = (1 - p) / (vocab - 1)
        probs[first + j, token] = p
    (nll,) = mean_token_nll(ByPosition(probs), tokenizer, [prompt], [target])
    # float32 log-softmax over 50257 logits: about 1e-5 off; a sum or one token is 0.5 off.
    assert nll == pytest.approx(record["scores"]["rewrite"]["nll_new"][0], abs=1e-4)
