"""Run a batch once up to a shared column, then many times from that column on.

The v* loop adds δ at each prompt's subject-last token and nothing earlier changes: attention
is causal, so the keys and values of every layer at the tokens *before* the subject-last one
are the same in every pass. :func:`align_subject_last` lays the batch out so that every row's
subject-last token sits in one column ``split`` (each row left-padded by ``split`` minus its
subject-last index, right-padded to the common width); :class:`PrefixCache` runs columns
``< split`` once, without gradients, and hands out the inputs of a forward pass over columns
``≥ split`` only, with a fresh KV cache holding that prefix. Given the blocks' MLPs, the
prefix pass runs each MLP on the real tokens only, and the top block's on none: the cache
holds keys and values, and no block reads a padding token's or the top block's MLP output.

Padding never changes the maths: the attention mask hides it and the position ids count real
tokens only, so every real token sees the same keys at the same positions as in any other
layout (results agree up to float rounding). This works with the standard Hugging Face
forward of every supported family, nothing family-specific.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from transformers import DynamicCache, PreTrainedModel

from rome_fast.model.hooks import only_at
from rome_fast.model.tokens import PromptBatch


def align_subject_last(batch: PromptBatch, pad_id: int) -> PromptBatch:
    """The same rows, re-padded so that every subject-last token is in one column."""
    lengths = batch.attention_mask.sum(1)  # (B,) real tokens of each row
    index = batch.positions - batch.offsets  # (B,) subject-last index inside each row
    split = int(index.max())
    offsets = split - index  # (B,) left padding that puts each subject-last token at `split`
    width = int((offsets + lengths).max())
    input_ids = torch.full((len(lengths), width), pad_id, dtype=batch.input_ids.dtype)
    attention_mask = torch.zeros((len(lengths), width), dtype=batch.attention_mask.dtype)
    for row in range(len(lengths)):
        old, new, n = int(batch.offsets[row]), int(offsets[row]), int(lengths[row])
        input_ids[row, new : new + n] = batch.input_ids[row, old : old + n]
        attention_mask[row, new : new + n] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    positions = torch.full_like(batch.positions, split)
    return PromptBatch(
        input_ids, attention_mask, position_ids, positions, offsets, batch.prompt_lengths
    )


class PrefixCache:
    """The KV cache of columns ``< split`` of an aligned batch, computed once.

    ``suffix_inputs()`` gives the keyword arguments of a forward pass over columns
    ``≥ split`` (``input_ids``/``position_ids`` of those columns, the full attention mask
    and a new cache holding the prefix). A new cache each time: the forward appends to it,
    and it must never carry one pass's autograd graph into the next.
    """

    def __init__(
        self,
        model: nn.Module,
        batch: PromptBatch,
        device: torch.device,
        mlps: Sequence[nn.Module] = (),
    ) -> None:
        split = int(batch.positions[0])
        if not bool((batch.positions == split).all()):
            raise ValueError("the batch is not aligned: use align_subject_last first")
        self.split = split
        inputs = batch.model_inputs(device)
        self._attention_mask = inputs["attention_mask"]  # (B, W)
        self._suffix_ids = inputs["input_ids"][:, split:]  # (B, W - split)
        self._suffix_positions = inputs["position_ids"][:, split:]  # (B, W - split)
        self._layers: list[tuple[Tensor, Tensor]] = []  # per layer (keys, values) of the prefix
        if split > 0:
            cache = DynamicCache()
            real = batch.attention_mask[:, :split].flatten().nonzero().squeeze(1)  # (n_real,)
            keep = dict.fromkeys(mlps[:-1], real) | dict.fromkeys(mlps[-1:], real[:0])
            with torch.no_grad(), only_at(keep, device):
                cast(PreTrainedModel, model).base_model(
                    input_ids=inputs["input_ids"][:, :split],
                    attention_mask=self._attention_mask[:, :split],
                    position_ids=inputs["position_ids"][:, :split],
                    cache=cache,
                    use_cache=True,
                )
            self._layers = [(keys, values) for keys, values, _sliding in cache]

    def select_rows(self, rows: Tensor) -> PrefixCache:
        """The cache of the batch's ``rows`` (m,) only, sliced, never recomputed."""
        selected = copy.copy(self)
        index = rows.to(self._attention_mask.device)
        selected._attention_mask = self._attention_mask[index]
        selected._suffix_ids = self._suffix_ids[index]
        selected._suffix_positions = self._suffix_positions[index]
        # keys, values: (B, heads, split, head_dim)
        selected._layers = [(keys[index], values[index]) for keys, values in self._layers]
        return selected

    def suffix_inputs(self) -> dict[str, Any]:
        inputs: dict[str, Any] = {
            "input_ids": self._suffix_ids,
            "attention_mask": self._attention_mask,
            "position_ids": self._suffix_positions,
        }
        if self._layers:
            inputs.update(cache=DynamicCache(self._layers), use_cache=True)
        else:
            inputs.update(use_cache=False)
        return inputs
