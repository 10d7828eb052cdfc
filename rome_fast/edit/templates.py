"""Seeded context templates: ``"{}"`` plus short texts sampled from the unedited model.

As in the public code: the schedule ``((5, 10), (10, 10))`` asks for 10 texts of length 5
and 10 of length 10, where the length counts the start token (so 4 and 9 new tokens),
top-k 5 sampling, each text becoming ``"<text>. {}"``, and the decoded text is NFKD
normalized with blank lines turned into spaces. Unlike the public code, sampling uses a
seeded ``torch.Generator`` (the public code never reseeds, so its templates differ from run
to run) and braces in the generated text are escaped (a ``{`` there breaks ``.format``).

Start token: the text ``<|endoftext|>`` when the tokenizer has it as one token (the public
code's choice; GPT-2 and GPT-J's BOS/EOS, and SmolLM2's pretraining document separator,
id 0: SmolLM2's ``bos_token`` ``<|im_start|>`` opens a chat turn, which would make chat
text, not plain text), otherwise the tokenizer's BOS, otherwise its EOS.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from rome_fast.hparams.defaults import PUBLIC_SCHEDULE
from rome_fast.model.tokens import escape_braces

DOCUMENT_SEPARATOR = "<|endoftext|>"


def start_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token generation starts from (see the module docstring for the choice)."""
    found = tokenizer.convert_tokens_to_ids(DOCUMENT_SEPARATOR)
    is_unknown = found == tokenizer.unk_token_id and tokenizer.unk_token != DOCUMENT_SEPARATOR
    if isinstance(found, int) and not is_unknown:
        return found
    for candidate in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if isinstance(candidate, int):
            return candidate
    raise ValueError(
        "the tokenizer has no <|endoftext|>, BOS or EOS token to start the "
        "context templates from; pass templates explicitly"
    )


@torch.no_grad()
def sample_top_k(
    model: nn.Module, start: Tensor, n_new: int, top_k: int, generator: torch.Generator
) -> Tensor:
    """Extend ``start`` (B, T0) by ``n_new`` top-k sampled tokens with the KV cache: (B, T0+n_new).

    Every row has the same length, so no padding or position ids are needed.
    """
    ids = start
    cache = None
    step_ids = start
    for _ in range(n_new):
        out = model(input_ids=step_ids, cache=cache, use_cache=True)
        cache = out.cache
        logits = out.logits[:, -1].float()  # (B, V)
        values, indices = logits.topk(top_k, dim=-1)  # (B, k)
        choice = torch.multinomial(torch.softmax(values, -1), 1, generator=generator)  # (B, 1)
        step_ids = indices.gather(-1, choice)  # (B, 1)
        ids = torch.cat([ids, step_ids], dim=-1)
    return ids


def _clean(text: str) -> str:
    return unicodedata.normalize("NFKD", text).replace("\n\n", " ")


def generate_context_templates(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    schedule: Sequence[tuple[int, int]] = PUBLIC_SCHEDULE,
    *,
    seed: int = 0,
    top_k: int = 5,
) -> list[str]:
    """``["{}"]`` then, per ``(length, count)`` of ``schedule``, ``count`` templates.

    Deterministic for a given model, tokenizer, schedule and seed.
    """
    for length, count in schedule:
        if length < 1 or count < 0:
            raise ValueError(
                f"schedule entries are (length >= 1, count >= 0), got {(length, count)}"
            )
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    start = start_token_id(tokenizer)
    templates = ["{}"]
    for length, count in schedule:
        if count == 0:
            continue
        first = torch.full((count, 1), start, dtype=torch.long, device=device)
        ids = sample_top_k(model, first, length - 1, top_k, generator)  # (count, length)
        for row in ids[:, 1:].tolist():
            text = _clean(str(tokenizer.decode(row, skip_special_tokens=True)))
            templates.append(escape_braces(text) + ". {}")
    return templates
