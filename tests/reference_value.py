"""A plain v* reference for the equality tests: the public loop with nothing skipped.

Whole-batch forward pass in the requested padding, log-softmax over every position, one
prompt at a time in Python, the KL written out; no prefix cache, no gathered read-out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rome_fast.hooks import add_to_output, capture
from rome_fast.hparams import HParams
from rome_fast.models import LoadedModel
from rome_fast.value import build_value_batch
from rome_fast.weights import weight_matrix


@dataclass(frozen=True)
class ReferenceValue:
    v_star: Tensor  # (d_out,)
    loss_trace: list[float]
    adam_steps: int
    loss_steps: list[dict[str, float]]  # per iteration: nll, kl, weight_decay, total, delta_norm


def reference_v_star(
    loaded: LoadedModel,
    layer: int,
    prompt: str,
    subject: str,
    target: str,
    templates: Sequence[str],
    hp: HParams,
) -> ReferenceValue:
    model, module = loaded.model, loaded.adapter.edited_module(loaded.model, layer)
    vb = build_value_batch(loaded.tokenizer, prompt, subject, target, templates, hp.padding_side)
    batch, n_target = vb.batch, vb.n_target
    inputs = batch.model_inputs("cpu")
    ends = batch.offsets + batch.attention_mask.sum(1)  # (B,) one past each row's last token
    delta = torch.zeros(weight_matrix(module).shape[0], requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=hp.v_lr)
    v_init: Tensor | None = None
    initial: Tensor | None = None
    trace: list[float] = []
    steps_record: list[dict[str, float]] = []
    steps = 0
    for iteration in range(hp.v_num_grad_steps):
        with (
            capture(module, output=True) as seen,
            add_to_output(module, delta, batch.rows, batch.positions),
        ):
            log_probs = torch.log_softmax(model(**inputs).logits.float(), dim=-1)  # (B, T, V)
        if v_init is None:
            assert seen.output is not None
            v_init = seen.output[vb.bare_row, int(batch.positions[vb.bare_row])].detach().float()
        nlls = []
        for row in range(vb.n_prompts):
            end = int(ends[row])
            # logits at t predict token t + 1; the row ends with all target tokens but the last
            picked = log_probs[row, end - n_target : end].gather(1, vb.target_ids[:, None])
            nlls.append(-picked.sum() / n_target)
        essence = log_probs[vb.essence_row, int(batch.positions[vb.essence_row])]  # (V,)
        if initial is None:
            initial = essence.detach()
        kl = (essence.exp() * (essence - initial)).sum()
        decay = delta.norm() / v_init.norm() ** 2
        parts = {
            "nll": torch.stack(nlls).mean(),
            "kl": hp.kl_factor * kl,
            "weight_decay": hp.v_weight_decay * decay,
        }
        loss = parts["nll"] + parts["kl"] + parts["weight_decay"]
        trace.append(loss.item())
        steps_record.append(
            {name: x.item() for name, x in parts.items()}
            | {"total": trace[-1], "delta_norm": delta.norm().item()}
        )
        if trace[-1] < hp.v_early_stop_loss or iteration == hp.v_num_grad_steps - 1:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
        with torch.no_grad():
            radius = hp.clamp_norm_factor * v_init.norm()
            if delta.norm() > radius:
                delta.mul_(radius / delta.norm())
    assert v_init is not None
    return ReferenceValue((v_init + delta).detach(), trace, steps, steps_record)
