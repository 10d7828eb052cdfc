"""Planted-bug editors for the conformance tests: each breaks one property on purpose, as a
``module:callable`` editor a user could write (``--editor tests.conform_editors:NAME``)."""

from __future__ import annotations

import dataclasses

import torch

from rome_fast.conform.ours import OurEditor, editor_for
from rome_fast.conform.protocol import ConformInputs
from rome_fast.methods.rome.update import RankOne, UpdateInputs
from rome_fast.model.weights import apply_factors, weight_matrix


def _r_rome_without_c_inverse(inp: UpdateInputs) -> RankOne:
    """r-ROME with the direction k* itself instead of C⁻¹k* (as if C were the identity)."""
    denominator = inp.k_star @ inp.k_star
    return RankOne((inp.v_star - inp.W0 @ inp.k_star) / denominator, inp.k_star, denominator)


dropped_c_inverse = OurEditor(_r_rome_without_c_inverse)


def wrong_key(inputs: ConformInputs) -> None:
    """r-ROME with the key read one word early: the subject's last word is moved into the
    prompt (the text is unchanged), so keys and v* sit at the wrong token."""
    r = inputs.request
    head, _, last = r.subject.rpartition(" ")
    if not head:
        raise ValueError(f"wrong_key needs a subject of two words or more, got {r.subject!r}")
    shifted = dataclasses.replace(r, prompt=r.prompt.replace("{}", "{} " + last), subject=head)
    editor_for(inputs).edit(shifted, "r-rome")


def two_weights(inputs: ConformInputs) -> None:
    """r-ROME, plus a rank-one nudge of the MLP's input projection in the same layer."""
    editor_for(inputs).edit(inputs.request, "r-rome")
    mlp = inputs.loaded.adapter.mlp(inputs.loaded.model, inputs.layer)
    first = next(m for name, m in mlp.named_children() if name != inputs.loaded.adapter.proj_name)
    W = weight_matrix(first)
    with torch.no_grad():
        W[0, 0] += 1e-3


@dataclasses.dataclass
class RevertByRounding(OurEditor):
    """Reverts by subtracting ΔW instead of restoring the saved weight: off by rounding."""

    def revert(self) -> None:
        assert self._last is not None
        editor, result = self._last
        apply_factors(editor.site.module, result.update.at(editor.site.module_name), sign=-1.0)
        self._last = None


revert_by_rounding = RevertByRounding("r-rome")


def raises_midway(inputs: ConformInputs) -> None:
    """Writes NaN into the edited weight, then fails: the harness must undo the write."""
    with torch.no_grad():
        inputs.site.weight[0, 0] = float("nan")
    raise RuntimeError("planted failure after a partial write")
