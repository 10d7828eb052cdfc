"""The public code's compute flow, kept deliberately naive: the yardstick of the benchmarks.

Nothing here is for real use. It computes the same edit as ``rome_fast.edit.editor.Editor`` the way
the public ROME / r-ROME code does, so the benchmarks can say how much faster the fast path is:

* keys: one full forward pass (through the unembedding) per context template, reading the
  edited module's input and output at the subject's last token; ``k*`` and the r-ROME
  average ``W0 k* + b`` are means over those passes, and the bare prompt gets one more pass;
* target value: every iteration runs the whole model on the 21 rewriting prompts plus the
  essence prompt and takes a log-softmax over the full vocabulary at every position; it stops
  where the public code stops (loss below 0.05, else ``v_num_grad_steps`` forward passes);
  this written-out loop is also the reference the fast v* loop is tested against;
* update: ``C⁻¹`` as an explicit ``torch.inverse`` in float32 (cached per layer, as the public
  code caches it per process), ``u`` normalized, the dense ``ΔW`` formed and added to ``W``.

Shared pieces whose cost is not what is measured are reused: context templates, subject
lookup, hooks, hyperparameters, statistics (``C`` itself), and the edit bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rome_fast.edit.editor import Editor
from rome_fast.edit.keys import bare_template_index
from rome_fast.edit.prepared import KeysLike, ValueLike
from rome_fast.edit.request import EditRequest
from rome_fast.edit.value import LOSS_PARTS, build_value_batch
from rome_fast.hparams.defaults import VStarOptions
from rome_fast.methods.rome.update import RankOne, Variant
from rome_fast.methods.rome.variants import (
    BUILTIN_KEYS,
    Insertion,
    KeyName,
    RegisteredVariant,
    variant_entry,
)
from rome_fast.model.hooks import add_to_output, capture
from rome_fast.model.loader import LoadedModel
from rome_fast.model.site import EditedSite
from rome_fast.model.tokens import apply_template, subject_last_positions
from rome_fast.model.weights import weight_matrix
from rome_fast.solve.low_rank import Factors


@dataclass(frozen=True)
class NaiveKeys:
    """Keys and module outputs at the subject's last token, float32."""

    k_star: Tensor  # (d_in,) mean of the per-template keys
    k_prompt: Tensor  # (d_in,) the bare prompt's key (its own forward pass)
    out_star: Tensor  # (d_out,) mean module output over the templates: W0 k* + b
    out_prompt: Tensor  # (d_out,) the bare prompt's module output: W0 k_prompt + b

    def key(self, name: KeyName) -> Tensor:
        return self.k_star if name == "k_star" else self.k_prompt

    def output(self, name: KeyName) -> Tensor:
        """The module output at key ``name``: ``W0 key + b``."""
        return self.out_star if name == "k_star" else self.out_prompt


def module_io_at_subject(
    loaded: LoadedModel, site: EditedSite, prompt: str, subject: str
) -> tuple[Tensor, Tensor]:
    """One full forward pass (logits included): the edited module's (input, output) there."""
    batch = subject_last_positions(loaded.tokenizer, [prompt], [subject])
    with torch.no_grad(), capture(site.module, output=True) as seen:
        loaded.model(**batch.model_inputs(loaded.device))
    assert seen.input is not None
    assert seen.output is not None
    position = int(batch.positions[0])
    return seen.input[0, position].float(), seen.output[0, position].float()


def naive_keys(
    loaded: LoadedModel, site: EditedSite, request: EditRequest, templates: Sequence[str]
) -> NaiveKeys:
    """``k*`` and the mean output with one forward pass per template, then the bare prompt."""
    bare_template_index(templates)  # same contract as the fast path
    prompt, subject = request.prompt, request.subject
    pairs = [
        module_io_at_subject(loaded, site, apply_template(t, prompt), subject) for t in templates
    ]
    k_prompt, out_prompt = module_io_at_subject(loaded, site, prompt, subject)
    return NaiveKeys(
        k_star=torch.stack([k for k, _ in pairs]).mean(0),
        k_prompt=k_prompt,
        out_star=torch.stack([o for _, o in pairs]).mean(0),
        out_prompt=out_prompt,
    )


@dataclass(frozen=True)
class NaiveValue:
    v_star: Tensor  # (d_out,) desired module output v_init + δ
    v_init: Tensor  # (d_out,)
    loss_trace: list[float]
    adam_steps: int
    loss_steps: list[dict[str, float]]  # per iteration: rome_fast.edit.value.LOSS_PARTS


def naive_value(
    loaded: LoadedModel,
    site: EditedSite,
    request: EditRequest,
    templates: Sequence[str],
    options: VStarOptions,
) -> NaiveValue:
    """The public ``compute_v`` loop, written out (``compute_v_star``'s signature).

    Every iteration runs the whole model on the rewriting prompts plus the essence prompt and
    takes a log-softmax over the full vocabulary at every position; the NLL is summed one
    prompt at a time, the KL and the weight decay are written out here (not shared with the
    fast loop, which is checked against this one). The loop stops as the public code does:
    before the backward pass once the loss is below ``v_early_stop_loss`` (0.05), or after
    ``v_num_grad_steps`` forward passes.
    """
    model, mlp = loaded.model, loaded.adapter.mlp(loaded.model, site.layer)
    vb = build_value_batch(loaded.tokenizer, request, templates, options.padding_side)
    batch, n_target = vb.batch, vb.n_target
    inputs = batch.model_inputs(loaded.device)
    rows, positions = batch.rows.to(loaded.device), batch.positions.to(loaded.device)
    target_ids = vb.target_ids.to(loaded.device)
    ends = batch.offsets + batch.attention_mask.sum(1)  # (B,) one past each row's last token
    delta = torch.zeros(site.d_out, device=loaded.device, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=options.lr)
    v_init: Tensor | None = None
    initial: Tensor | None = None
    steps: list[dict[str, float]] = []
    for iteration in range(options.num_grad_steps):
        with capture(mlp, output=True) as seen, add_to_output(mlp, delta, rows, positions):
            log_probs = torch.log_softmax(model(**inputs).logits.float(), dim=-1)  # (B, T, V)
        if v_init is None:
            assert seen.output is not None
            v_init = seen.output[vb.bare_row, int(batch.positions[vb.bare_row])].detach().float()
        nlls = []
        for row in range(vb.n_prompts):
            end = int(ends[row])
            # logits at t predict token t + 1; the row ends with all target tokens but the last
            picked = log_probs[row, end - n_target : end].gather(1, target_ids[:, None])
            nlls.append(-picked.sum() / n_target)
        essence = log_probs[vb.essence_row, int(batch.positions[vb.essence_row])]  # (V,)
        if initial is None:
            initial = essence.detach()
        kl = (essence.exp() * (essence - initial)).sum()  # KL(now ‖ initial)
        decay = delta.norm() / v_init.norm() ** 2
        nll, kl_term, decay_term = (
            torch.stack(nlls).mean(),
            options.kl_factor * kl,
            options.weight_decay * decay,
        )
        loss = nll + kl_term + decay_term
        parts = (nll, kl_term, decay_term, loss, delta.norm())
        steps.append({k: float(p.detach()) for k, p in zip(LOSS_PARTS, parts, strict=True)})
        if steps[-1]["total"] < options.early_stop_loss or iteration == options.num_grad_steps - 1:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            radius = options.clamp_norm_factor * v_init.norm()
            if delta.norm() > radius:
                delta.mul_(radius / delta.norm())
    assert v_init is not None
    trace = [step["total"] for step in steps]
    return NaiveValue((v_init + delta).detach(), v_init, trace, len(trace) - 1, steps)


def naive_inverse(C: Tensor) -> Tensor:
    """The public code's ``C⁻¹``: an explicit inverse in float32."""
    return torch.inverse(C.float())


def check_naive_variant(variant: str | Variant) -> RegisteredVariant:
    """The registered entry if the naive flow implements it (an ``Insertion`` at the keys it
    is registered with, as the built-ins are), else a ValueError."""
    entry = variant_entry(variant)
    if entry.fn != Insertion(entry.inserts_at, entry.direction_at):
        raise ValueError(
            f"the naive yardstick implements only insertion variants such as the built-ins "
            f"{', '.join(BUILTIN_KEYS)}, got {entry.name!r}; use the fast editor (--impl fast) "
            "for other variants"
        )
    return entry


def naive_update(
    C_inv: Tensor, keys: NaiveKeys, v_star: Tensor, variant: RegisteredVariant
) -> tuple[Tensor, Tensor, Tensor]:
    """``(left (d_out,), right (d_in,), denominator)`` with ``ΔW = outer(left, right)``.

    As in the public code: ``u = C⁻¹ k / ‖C⁻¹ k‖`` and the value side uses module outputs,
    so the bias cancels (``v* − (W0 k + b)``).
    """
    u = C_inv @ keys.key(variant.direction_at).float()
    u = u / u.norm()
    denominator = u @ keys.key(variant.inserts_at)
    return (v_star.float() - keys.output(variant.inserts_at)) / denominator, u, denominator


class NaiveEditor(Editor):
    """``Editor`` with the naive compute flow; same constructor, results, revert and restore.

    Only the built-in variants exist here. ``C⁻¹`` is an explicit float32 inverse of the C the
    fast editor factors (rebuilt from its Cholesky factor), computed once per layer.
    """

    def __init__(self, loaded: LoadedModel, **kwargs: Any) -> None:
        super().__init__(loaded, **kwargs)
        if self.hparams.v_star.precision != "fp32":
            raise ValueError(
                f"the naive baseline runs float32 only (the public code's arithmetic), got "
                f"v_precision={self.hparams.v_star.precision!r}; use the fast editor for it"
            )
        self._inverses: dict[int, Tensor] = {}

    def inverse_covariance(self, layer: int) -> Tensor:
        """``C⁻¹`` (d_in, d_in) float32 for ``layer``, computed once per editor."""
        if layer not in self._inverses:
            L = self.covariance(layer).cholesky
            self._inverses[layer] = naive_inverse(L @ L.T).to(self.loaded.device)
        return self._inverses[layer]

    def _check_variant(self, variant: str | Variant) -> RegisteredVariant:
        return check_naive_variant(variant)

    def _keys(self, request: EditRequest, templates: list[str], _value: ValueLike) -> NaiveKeys:
        return naive_keys(self.loaded, self.site, request, templates)

    def _value(self, request: EditRequest, templates: list[str]) -> NaiveValue:
        return naive_value(self.loaded, self.site, request, templates, self.hparams.v_star)

    def _prepare_covariance(self, layer: int) -> None:
        self.inverse_covariance(layer)

    def _update_factors(
        self, site: EditedSite, keys: KeysLike, value: ValueLike, variant: RegisteredVariant
    ) -> RankOne:
        assert isinstance(keys, NaiveKeys)  # made by this class's ``_keys``
        C_inv = self.inverse_covariance(site.layer)
        left, right, denominator = naive_update(C_inv, keys, value.v_star, variant)
        # Reported like the fast path's: u(k)ᵀk with u = C⁻¹k unnormalized.
        denominator = denominator * (C_inv @ keys.key(variant.direction_at)).norm()
        return RankOne(left, right, denominator)

    def _write_site(self, module: nn.Module, factors: Factors) -> None:
        W = weight_matrix(module)
        with torch.no_grad():
            W += factors.delta().to(W.dtype)  # the dense ΔW, as published
