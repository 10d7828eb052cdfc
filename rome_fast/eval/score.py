"""Scoring a causal LM: mean per-token NLL of a target after a prompt, and generation.

The prompt and the target are tokenized separately and concatenated as ids, so the target's
tokens are the same for every prompt (the public code's choice) and the same as the edit
wrote (``rome_fast.model.tokens.target_token_ids``: one rule for both), and the prompt keeps
the tokenizer's special tokens (a BOS, if the model uses one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from rome_fast.model.context import check_fits
from rome_fast.model.tokens import PADDING_SIDES, pad_id, target_token_ids


def pad_batch(
    sequences: Sequence[Sequence[int]], fill_id: int, side: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """ids (B, T), attention mask (B, T), position ids (B, T) and each row's offset."""
    if side not in PADDING_SIDES:
        raise ValueError(f"padding side must be one of {PADDING_SIDES}, got {side!r}")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), fill_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    offsets = []
    for row, seq in enumerate(sequences):
        start = width - len(seq) if side == "left" else 0
        ids[row, start : start + len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, start : start + len(seq)] = 1
        offsets.append(start)
    # Positions count real tokens only, so left padding does not shift them.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions, offsets


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    ids: list[int] = tokenizer(prompt)["input_ids"]
    return ids


@torch.no_grad()
def mean_token_nll(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    batch_size: int = 16,
    padding_side: str = "right",
) -> np.ndarray:
    """Mean per-token NLL (nats) of ``targets[i]`` after ``prompts[i]``, shape (N,).

    The target is tokenized by ``target_token_ids`` (one leading space).
    """
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets; pair them up")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    out = np.empty(len(prompts), dtype=np.float64)
    for start in range(0, len(prompts), batch_size):
        chunk = range(start, min(start + batch_size, len(prompts)))
        heads = [_prompt_ids(tokenizer, prompts[i]) for i in chunk]
        tails = [target_token_ids(tokenizer, targets[i]) for i in chunk]
        for i, head, tail in zip(chunk, heads, tails, strict=True):
            check_fits(model, len(head) + len(tail), f"prompt {prompts[i][:60]!r} + target")
        ids, mask, positions, offsets = pad_batch(
            [h + t for h, t in zip(heads, tails, strict=True)], pad_id(tokenizer), padding_side
        )
        logits = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
        ).logits  # (B, T, V)
        for row, (head, tail, offset) in enumerate(zip(heads, tails, offsets, strict=True)):
            # Logits at position t predict token t + 1.
            first = offset + len(head) - 1
            log_probs = torch.log_softmax(logits[row, first : first + len(tail)].float(), dim=-1)
            picked = log_probs.gather(-1, torch.tensor(tail, device=device)[:, None])
            out[chunk[row]] = float(-picked.mean())
    return out


@dataclass(frozen=True)
class Generation:
    prompts: list[str]
    texts: list[str]  # the generated continuations only
    token_ids: list[list[int]]  # the generated ids, cut at the first end-of-text


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 50,
    top_k: int | None = 5,
    seed: int = 0,
) -> Generation:
    """Continue each prompt (batched, left padded, with the KV cache).

    ``top_k=None`` decodes greedily; otherwise top-k sampling (the public code uses k=5)
    from a generator seeded with ``seed``, independent of the global RNG.
    """
    if not prompts:
        raise ValueError("generate needs at least one prompt")
    device = next(model.parameters()).device
    heads = [_prompt_ids(tokenizer, p) for p in prompts]
    for prompt, head in zip(prompts, heads, strict=True):
        check_fits(
            model, len(head) + max_new_tokens, f"prompt {prompt[:60]!r} + {max_new_tokens} new"
        )
    ids, mask, positions, _ = pad_batch(heads, pad_id(tokenizer), "left")
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    new_tokens = []
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1].float()  # (B, V)
        if top_k is None:
            token = logits.argmax(-1)
        else:
            values, indices = logits.topk(top_k, dim=-1)
            choice = torch.multinomial(torch.softmax(values, -1), 1, generator=generator)
            token = indices.gather(-1, choice).squeeze(-1)
        new_tokens.append(token)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        positions = positions[:, -1:] + 1
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=positions,
            cache=out.cache,
            use_cache=True,
        )
    generated = torch.stack(new_tokens, dim=-1).tolist() if new_tokens else [[] for _ in prompts]
    eos = tokenizer.eos_token_id
    cut = [row[: row.index(eos)] if eos in row else row for row in generated]
    texts = [str(tokenizer.decode(row, skip_special_tokens=True)) for row in cut]
    return Generation(list(prompts), texts, cut)
