"""Keys for a batch of requests: every request under every template in one forward pass
stopped at the edited module, and the key matrix K (d_in, n) a batched method writes at.

Which key stands for a fact (SPEC §7): ``"k_star"`` the mean over all templates (r-ROME's
homogeneous choice), ``"k_prompt"`` the bare prompt's (p-ROME's), or ``"memit"`` the public
MEMIT/EMMET/AlphaEdit ``compute_ks``: the mean of two group means, ½ (bare-prompt key) +
½ (mean over the prefixed templates), while their residual is measured at the bare prompt.

The multi-layer schedule reads keys at each edited layer on the model as the layers below it
were just edited, so each layer needs its own pass; but nothing below the first edited layer
is ever edited: ``KeyPrompts`` tokenizes the prompts once and runs the blocks below that layer
once, and each layer's pass replays that block output (``model.hooks.replay_blocks``) and runs
only the blocks from the first edited layer up: the same numbers, bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from rome_fast.edit.keys import Keys, bare_template_index, inputs_at_subjects
from rome_fast.edit.request import EditRequest
from rome_fast.model.hooks import capture, replay_blocks, run_until
from rome_fast.model.linear import onednn_linears
from rome_fast.model.loader import LoadedModel
from rome_fast.model.site import EditedSite
from rome_fast.model.tokens import PromptBatch, apply_template, subject_last_positions

KeyChoice = Literal["k_star", "k_prompt", "memit"]
KEY_CHOICES: tuple[KeyChoice, ...] = get_args(KeyChoice)


def check_key_choice(choice: str) -> KeyChoice:
    """``choice`` as a ``KeyChoice``; ValueError naming the known ones."""
    for known in KEY_CHOICES:
        if choice == known:
            return known
    raise ValueError(
        f"unknown key choice {choice!r}; choose one of {', '.join(KEY_CHOICES)} (memit: the "
        "public code's ½ bare prompt + ½ prefix mean)"
    )


def compute_batch_keys(
    loaded: LoadedModel,
    site: EditedSite,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    padding_side: str = "right",
) -> list[Keys]:
    """``Keys`` of each request over ``templates`` (which must include ``"{}"``), in one pass of
    n × len(templates) prompts."""
    return keys_from_prompts(
        loaded, site, key_prompts(loaded, requests, templates, 0, padding_side)
    )


@dataclass(frozen=True)
class KeyPrompts:
    """Every request under every template, tokenized once, and the output of block
    ``first − 1`` on them (None when ``first`` is 0): what each edited layer's keys pass
    starts from when no layer below ``first`` is edited."""

    batch: PromptBatch  # request-major: row i · T + t is request i under template t
    templates: tuple[str, ...]
    first: int
    below: Tensor | None  # (n · T, width, d_model): block first − 1's output
    below_is_tuple: bool  # that block returned (hidden, ...)

    @property
    def n_requests(self) -> int:
        return int(self.batch.input_ids.shape[0]) // len(self.templates)


@torch.no_grad()
def key_prompts(
    loaded: LoadedModel,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    first: int,
    padding_side: str = "right",
) -> KeyPrompts:
    """The prompts of ``compute_batch_keys`` and one pass through the blocks below ``first``."""
    bare_template_index(templates)  # fail before the forward pass
    prompts = [apply_template(t, request.prompt) for request in requests for t in templates]
    subjects = [request.subject for request in requests for _ in templates]
    batch = subject_last_positions(loaded.tokenizer, prompts, subjects, padding_side)
    if first == 0:
        return KeyPrompts(batch, tuple(templates), first, None, False)
    block = loaded.adapter.block(loaded.model, first - 1)
    with onednn_linears(loaded.model), capture(block, output=True, stop=True) as seen:
        run_until(loaded.model, **batch.model_inputs(loaded.device))
    assert seen.output is not None, f"the forward pass never reached block {first - 1}"
    return KeyPrompts(batch, tuple(templates), first, seen.output, seen.output_is_tuple)


@torch.no_grad()
def keys_from_prompts(loaded: LoadedModel, site: EditedSite, prompts: KeyPrompts) -> list[Keys]:
    """``compute_batch_keys`` at ``site`` (at or above ``prompts.first``), the blocks below
    ``prompts.first`` replayed from ``prompts.below``."""
    if site.layer < prompts.first:
        raise ValueError(f"keys at layer {site.layer} cannot start above it, at {prompts.first}")
    blocks = loaded.adapter.layers(loaded.model)
    replay = (
        contextlib.nullcontext()
        if prompts.below is None
        else replay_blocks(
            blocks, prompts.first - 1, prompts.below, as_tuple=prompts.below_is_tuple
        )
    )
    with onednn_linears(loaded.model), replay:
        flat = inputs_at_subjects(loaded, site, prompts.batch)  # (n T, d_in)
    per_request = flat.view(prompts.n_requests, len(prompts.templates), -1)  # (n, T, d_in)
    return [Keys.from_per_template(keys, prompts.templates) for keys in per_request]


def key_matrix(keys: Sequence[Keys], templates: Sequence[str], choice: KeyChoice) -> Tensor:
    """K (d_in, n): one column per fact, the key ``choice`` names (module docstring)."""
    if choice == "k_star":
        return torch.stack([k.k_star for k in keys], dim=1)
    if choice == "k_prompt":
        return torch.stack([k.k_prompt for k in keys], dim=1)
    bare = bare_template_index(templates)
    prefixed = [i for i in range(len(templates)) if i != bare]
    if not prefixed:  # no prefixes: the public code's second group is empty, the key is bare
        return torch.stack([k.k_prompt for k in keys], dim=1)
    return torch.stack([(k.k_prompt + k.per_template[prefixed].mean(0)) / 2 for k in keys], dim=1)
