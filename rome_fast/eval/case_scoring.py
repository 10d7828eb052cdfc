"""One CounterFact case scored on a model: which prompts feed which metric (``score_case``,
``metrics_of``) and the generation check behind the entropy collapse flag."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from rome_fast.eval.config import RunConfig
from rome_fast.eval.data import EvalCase
from rome_fast.eval.score import generate, mean_token_nll
from rome_ref import metrics as ref


def score_case(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, case: EvalCase, batch_size: int
) -> dict[str, Any]:
    """NLLs of the new and the true target on the rewrite, paraphrase and neighborhood prompts."""
    groups = {
        "rewrite": ([case.rewrite_prompt], case.target_true),
        "paraphrase": (list(case.paraphrase_prompts), case.target_true),
        "neighborhood": (list(case.neighborhood_prompts), case.neighborhood_target),
    }
    prompts = [p for ps, _ in groups.values() for p in ps]
    true_targets = [t for ps, t in groups.values() for _ in ps]
    nll = mean_token_nll(
        model,
        tokenizer,
        prompts + prompts,
        [case.target_new] * len(prompts) + true_targets,
        batch_size=batch_size,
    )
    new, true = nll[: len(prompts)], nll[len(prompts) :]
    out: dict[str, Any] = {}
    start = 0
    for name, (ps, _) in groups.items():
        stop = start + len(ps)
        out[name] = {"nll_new": new[start:stop].tolist(), "nll_true": true[start:stop].tolist()}
        start = stop
    return out


def metrics_of(scores: Mapping[str, Any]) -> dict[str, float]:
    pair = {k: (v["nll_new"], v["nll_true"]) for k, v in scores.items()}
    return ref.record_metrics(pair["rewrite"], pair["paraphrase"], pair["neighborhood"])


def generation_prompts(case: EvalCase, n: int) -> list[str]:
    """``n`` prompts for the entropy check: the case's generation prompts, or (reduced
    schema, zsRE) its rewrite and paraphrase prompts, repeated in order."""
    pool = list(case.generation_prompts) or [case.rewrite_prompt, *case.paraphrase_prompts]
    return [pool[i % len(pool)] for i in range(n)]


def generation_check(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    cfg: RunConfig,
    seed: int,
) -> dict[str, Any]:
    gen = generate(model, tokenizer, prompts, max_new_tokens=cfg.generation_tokens, seed=seed)
    vocab = int(model.get_output_embeddings().weight.shape[0])  # type: ignore[operator]
    return {
        "texts": gen.texts,
        "ngram_entropy": ref.generation_entropy(gen.texts),
        "unigram_entropy": ref.normalized_unigram_entropy(gen.token_ids, vocab),
    }
