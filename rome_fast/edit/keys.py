"""The keys ``k*`` and ``k_prompt``: one batched forward pass stopped at the edited module.

As in the public code, ``k*`` averages the edited module's input at the subject's last token
over every template applied to the *request prompt* (the subject in its slot), and the
bare prompt (template ``"{}"``) is one of them; ``k_prompt`` is the key of the bare prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rome_fast.edit.request import EditRequest
from rome_fast.model.hooks import capture, run_until
from rome_fast.model.linear import onednn_linears
from rome_fast.model.loader import LoadedModel
from rome_fast.model.site import EditedSite
from rome_fast.model.tokens import PromptBatch, apply_template, subject_last_positions

BARE_TEMPLATE = "{}"


@dataclass(frozen=True)
class Keys:
    k_star: Tensor  # (d_in,) float32, mean over templates
    k_prompt: Tensor  # (d_in,) float32, the bare prompt's key
    per_template: Tensor  # (n_templates, d_in) float32

    @classmethod
    def from_per_template(cls, per_template: Tensor, templates: Sequence[str]) -> Keys:
        """``per_template`` (n_templates, d_in): the key of each template, in order."""
        bare = bare_template_index(templates)
        return cls(
            k_star=per_template.mean(0), k_prompt=per_template[bare], per_template=per_template
        )


def bare_template_index(templates: Sequence[str]) -> int:
    """Where the bare template ``"{}"`` is; every template list must hold it."""
    try:
        return list(templates).index(BARE_TEMPLATE)
    except ValueError:
        raise ValueError(
            f"the context templates must include the bare template "
            f"{BARE_TEMPLATE!r} (the prompt itself); got "
            f"{list(templates)[:3]}..."
        ) from None


@torch.no_grad()
def keys_at_subject(
    loaded: LoadedModel,
    site: EditedSite,
    prompts: Sequence[str],
    subjects: Sequence[str],
    padding_side: str = "right",
) -> Tensor:
    """The edited module's input at each prompt's subject-last token: (n_prompts, d_in) float32."""
    batch = subject_last_positions(loaded.tokenizer, prompts, subjects, padding_side)
    return inputs_at_subjects(loaded, site, batch)


@torch.no_grad()
def inputs_at_subjects(loaded: LoadedModel, site: EditedSite, batch: PromptBatch) -> Tensor:
    """The edited module's input at each row's subject-last token of ``batch``: (B, d_in)
    float32, from a pass stopped there."""
    with capture(site.module, stop=True) as seen:
        run_until(loaded.model, **batch.model_inputs(loaded.device))
    if seen.input is None:
        raise RuntimeError(f"the forward pass never reached {site.module_name}")
    rows = batch.rows.to(seen.input.device)
    return seen.input[rows, batch.positions.to(seen.input.device)].float()


def compute_keys(
    loaded: LoadedModel,
    site: EditedSite,
    request: EditRequest,
    templates: Sequence[str],
    padding_side: str = "right",
) -> Keys:
    """``k*`` over ``templates`` (which must include ``"{}"``) and ``k_prompt``, one pass."""
    bare_template_index(templates)  # fail before the forward pass
    prompts = [apply_template(t, request.prompt) for t in templates]
    with onednn_linears(loaded.model):
        per_template = keys_at_subject(
            loaded, site, prompts, [request.subject] * len(prompts), padding_side
        )
    return Keys.from_per_template(per_template, templates)
