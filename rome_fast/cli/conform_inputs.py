"""The context templates every editor under test gets in ``rome conform`` (single and
batched) and ``rome eval --editor``: seeded, the same for every editor."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rome_fast.hparams.defaults import HParams
    from rome_fast.model.loader import LoadedModel


def context_templates(args: argparse.Namespace, loaded: LoadedModel, hparams: HParams) -> list[str]:
    """The seeded context templates (``--templates FILE``'s where the command has it), the
    same for every editor; braces stripped from the sampled text (see ``harness_inputs``)."""
    from rome_fast.edit.templates import generate_context_templates

    fixed = getattr(args, "fixed_templates", None)  # --templates FILE, where the command has it
    if fixed is not None:
        return list(fixed)
    return [
        t.replace("{{", "").replace("}}", "")
        for t in generate_context_templates(
            loaded.model,
            loaded.tokenizer,
            hparams.v_star.context_template_schedule,
            seed=args.seed,
            top_k=hparams.v_star.context_template_top_k,
        )
    ]
