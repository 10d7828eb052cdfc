"""Agreement of our editor with the paper's public code on the same model, templates and C:
keys, v* and ΔW, each against the float32 noise floor measured on the same inputs.

The floor of a code is its own float32-vs-float64 drift. Ours runs in float64 on a float64
copy of the model. The public code cannot (it casts C⁻¹ to float32); for this measurement
only, its float64 run gets a float64 model, float64 default dtype and a float64 C⁻¹ in place of
``get_inv_cov`` — a change of precision, not of the maths, and never used in ``rome conform``.

``python -m rome_fast.conform.agreement --anchors PATH`` prints the table of
docs/results/conformance-agreement.md.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from rome_fast.conform.cases import conformance_cases
from rome_fast.conform.floors import in_dtype
from rome_fast.conform.ours import OurEditor, editor_for
from rome_fast.conform.patches import cuda_calls_to, default_dtype, patched
from rome_fast.conform.properties import keys_of
from rome_fast.conform.protocol import ConformInputs
from rome_fast.conform.public import LAYOUTS, PublicEditor
from rome_fast.edit.request import EditRequest
from rome_fast.hparams.defaults import HParams, hparams_for
from rome_fast.model.loader import LoadedModel, random_model

QUANTITIES = ("k_star", "k_prompt", "v_star", "delta")


@dataclass(frozen=True)
class Outcome:
    """What one code computed for one edit, in float64 for comparison."""

    k_star: Tensor
    k_prompt: Tensor
    v_star: Tensor  # the value written at the variant's insertion key
    delta: Tensor  # ΔW (d_out, d_in)


def relative(a: Tensor, b: Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _edit_delta(editor: OurEditor | PublicEditor, inputs: ConformInputs) -> Tensor:
    W = inputs.site.weight
    W0 = W.detach().clone()
    editor.edit(inputs)
    delta = W.detach().double() - W0.double()
    editor.revert()
    return delta


def _value(
    inputs: ConformInputs, variant: str, k_star: Tensor, k_prompt: Tensor, delta: Tensor
) -> Tensor:
    """The module output the edit writes at the variant's insertion key."""
    W0 = inputs.site.weight.detach().double()
    bias = inputs.site.bias
    key = k_star if keys_of(variant)[0] == "k_star" else k_prompt
    b = torch.zeros(W0.shape[0], dtype=torch.float64) if bias is None else bias.detach().double()
    return (W0 + delta) @ key + b


def ours(inputs: ConformInputs, variant: str) -> Outcome:
    prepared = editor_for(inputs).prepare(inputs.request)
    k_star, k_prompt = prepared.keys.k_star.double(), prepared.keys.k_prompt.double()
    delta = _edit_delta(OurEditor(variant), inputs)
    return Outcome(k_star, k_prompt, _value(inputs, variant, k_star, k_prompt, delta), delta)


def public(inputs: ConformInputs, variant: str, editor: PublicEditor) -> Outcome:
    """The paper's code: its keys (``repr_tools``) and its edit through ``apply_rome_to_model``."""
    repr_tools = editor.module("repr_tools")
    hp = editor.hparams(inputs)
    r = inputs.request
    with cuda_calls_to(inputs.loaded.device), torch.no_grad():

        def key(templates: list[str]) -> Tensor:
            reprs: Tensor = repr_tools.get_reprs_at_word_tokens(
                model=inputs.loaded.model,
                tok=inputs.loaded.tokenizer,
                context_templates=[t.format(r.prompt) for t in templates],
                words=[r.subject] * len(templates),
                subtoken="last",
                layer=inputs.layer,
                module_template=hp.rewrite_module_tmp,
                track="in",
            )  # (n_templates, d_in)
            return reprs.mean(0).double()

        k_star, k_prompt = key(inputs.templates), key(["{}"])
    delta = _edit_delta(editor, inputs)
    return Outcome(k_star, k_prompt, _value(inputs, variant, k_star, k_prompt, delta), delta)


def public_float64(inputs: ConformInputs, variant: str, editor: PublicEditor) -> Outcome:
    """The public code at float64 (floor measurement only; see the module docstring)."""
    inverse = torch.linalg.inv(inputs.C.double())
    with (
        default_dtype(torch.float64),
        patched(editor.module("compute_u"), get_inv_cov=lambda *_args, **_kwargs: inverse),
    ):
        return public(inputs, variant, editor)


def measure_agreement(
    family: str,
    variant: str,
    anchor: Path,
    request: EditRequest,
    hparams: HParams,
    templates: list[str],
    C: Tensor,
) -> dict[str, dict[str, float]]:
    """Per quantity: public vs ours (float32), each code's float32-vs-float64 floor, and
    public vs ours at float64."""
    loaded32 = random_model(family)
    loaded64 = in_dtype(loaded32, torch.float64)
    editor = PublicEditor(LAYOUTS["rebuilding-rome"], anchor, variant)

    def inputs(loaded: LoadedModel, C_: Tensor) -> ConformInputs:
        site = loaded.adapter.edited_site(loaded.model, hparams.layer)
        return ConformInputs(loaded, request, site, templates, C_, hparams, 0)

    in32, in64 = inputs(loaded32, C), inputs(loaded64, C.double())
    runs = {
        "ours32": ours(in32, variant),
        "ours64": ours(in64, variant),
        "public32": public(in32, variant, editor),
        "public64": public_float64(in64, variant, editor),
    }
    pairs = {
        "public_vs_ours": ("public32", "ours32"),
        "floor_ours": ("ours32", "ours64"),
        "floor_public": ("public32", "public64"),
        "public_vs_ours_float64": ("public64", "ours64"),
    }
    return {
        q: {
            name: relative(getattr(runs[a], q), getattr(runs[b], q))
            for name, (a, b) in pairs.items()
        }
        for q in QUANTITIES
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--anchors", type=Path, required=True, help="folder holding rebuilding-rome/"
    )
    parser.add_argument("--steps", type=int, default=20, help="v* loop iterations")
    args = parser.parse_args()
    templates = ["{}", "Once upon a time. {}", "He said hello. {}", "In the news today. {}"]
    print(
        "| model | variant | quantity | public vs ours (f32) | floor ours | floor public | "
        "public vs ours (f64) |\n|---|---|---|---|---|---|---|"
    )
    for family in ("tiny-gpt2", "tiny-gptj"):
        hparams = hparams_for(family).replace(v_num_grad_steps=args.steps)
        loaded = random_model(family)
        from rome_fast.stats.collect import layer_second_moment

        C = layer_second_moment(loaded, hparams.layer, n_samples=128, progress=False)
        for variant in ("rome", "r-rome", "p-rome"):
            table = measure_agreement(
                family,
                variant,
                args.anchors / "rebuilding-rome",
                conformance_cases(1)[0],
                hparams,
                templates,
                C,
            )
            for q, row in table.items():
                print(
                    f"| {family} | {variant} | {q} | "
                    + " | ".join(f"{v:.2g}" for v in row.values())
                    + " |"
                )


if __name__ == "__main__":
    main()
