"""Keys for a batch of requests: every request under every template in one forward pass
stopped at the edited module, and the key matrix K (d_in, n) a batched method writes at.

Which key stands for a fact (SPEC §7): ``"k_star"`` the mean over all templates (r-ROME's
homogeneous choice), ``"k_prompt"`` the bare prompt's (p-ROME's), or ``"memit"`` the public
MEMIT/EMMET/AlphaEdit ``compute_ks``: the mean of two group means, ½ (bare-prompt key) +
½ (mean over the prefixed templates), while their residual is measured at the bare prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

from rome_fast.edit.keys import Keys, bare_template_index, keys_at_subject
from rome_fast.edit.request import EditRequest
from rome_fast.model.linear import onednn_linears
from rome_fast.model.loader import LoadedModel
from rome_fast.model.site import EditedSite
from rome_fast.model.tokens import apply_template

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
    bare_template_index(templates)  # fail before the forward pass
    prompts = [apply_template(t, request.prompt) for request in requests for t in templates]
    subjects = [request.subject for request in requests for _ in templates]
    with onednn_linears(loaded.model):
        flat = keys_at_subject(loaded, site, prompts, subjects, padding_side)  # (n T, d_in)
    per_request = flat.view(len(requests), len(templates), -1)  # (n, T, d_in)
    return [Keys.from_per_template(keys, templates) for keys in per_request]


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
