"""Accuracy cost of the v* loop's precision, measured against float64 (BENCHMARKS.md).

    python -m benchmarks.precision --out runs/precision                    # SmolLM2 on CPU
    python -m benchmarks.precision --model random:tiny-gpt2 --out runs/p   # seconds, a check
    python -m benchmarks.precision --model random:gpt2-xl --device cuda --out runs/p-gpu

The same requests are edited on a float64 copy of the model (the reference: keys, v* and the
update all in float64) and on the float32 model with each v* precision (``fp32``, ``bf16``,
and ``tf32`` on CUDA), with the same context templates and the same C. Per request and
precision: the relative error against float64 of k*, v* and ΔW, the last v* loss, and the
time of the v* phase. Written to ``results.json`` and ``summary.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from benchmarks.conftest import make_setup
from rome_fast.edit.editor import Editor
from rome_fast.edit.request import EditRequest, EditResult
from rome_fast.hparams.defaults import hparams_for
from rome_fast.model.loader import load_model
from rome_fast.solve.low_rank import Factors

REQUESTS = (
    EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris"),
    EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
    EditRequest("{} is a product of", "The iPhone", "Nokia", "Apple"),
)


def relative(a: torch.Tensor, reference: torch.Tensor) -> float:
    a, reference = a.double().cpu(), reference.double().cpu()
    return float((a - reference).norm() / reference.norm())


def delta_w_error(result: EditResult, reference: EditResult) -> float:
    """``factors_error`` of the two results' updates at the edited module."""
    module_name = result.module_name
    return factors_error(result.update.at(module_name), reference.update.at(module_name))


def factors_error(mine: Factors, reference: Factors) -> float:
    """‖ΔW − ΔW_ref‖_F / ‖ΔW_ref‖_F for ΔW = ABᵀ, ΔW_ref = CDᵀ (any rank), without forming
    either: ‖ABᵀ − CDᵀ‖² = Σ(AᵀA ∘ BᵀB) + Σ(CᵀC ∘ DᵀD) − 2 Σ(AᵀC ∘ BᵀD)."""
    a, b = mine.left.double(), mine.right.double()
    c, d = reference.left.double(), reference.right.double()
    ref_sq = ((c.T @ c) * (d.T @ d)).sum()
    diff_sq = ((a.T @ a) * (b.T @ b)).sum() + ref_sq - 2 * ((a.T @ c) * (b.T @ d)).sum()
    return float(diff_sq.clamp(min=0).sqrt() / ref_sq.sqrt())


def model_name(loaded: Any) -> str:
    return f"{loaded.name} {next(loaded.model.parameters()).dtype}"


def precisions_for(device: torch.device) -> list[str]:
    return ["fp32", "tf32", "bf16"] if device.type == "cuda" else ["fp32", "bf16"]


def run(
    model: str, device: torch.device, variant: str, seed: int, synthetic_c: bool
) -> dict[str, Any]:
    loaded = load_model(model, dtype=torch.float32, device=device, seed=seed)
    hparams = hparams_for(model)
    setup = make_setup(loaded, hparams, seed)
    templates = setup.templates
    if synthetic_c:
        C = setup.C
    else:
        L = Editor(loaded, hparams=hparams, seed=seed).covariance(hparams.layer).cholesky
        C = (L.double() @ L.double().T).cpu()

    def edits(loaded_model: Any, precision: str, c: torch.Tensor) -> list[EditResult]:
        editor = Editor(
            loaded_model,
            hparams=hparams.replace(v_precision=precision),
            seed=seed,
            stats=c,
            templates=templates,
        )
        results = []
        for request in tqdm(REQUESTS, desc=f"{model_name(loaded_model)} {precision}"):
            results.append(editor.edit(request, variant))
            editor.restore()
        return results

    by_precision = {p: edits(loaded, p, C.float()) for p in precisions_for(device)}
    del loaded
    loaded64 = load_model(model, dtype=torch.float64, device=device, seed=seed)
    reference = edits(loaded64, "fp32", C.double())
    rows = []
    for precision, results in by_precision.items():
        for request, result, ref in zip(REQUESTS, results, reference, strict=True):
            rows.append(
                {
                    "precision": precision,
                    "subject": request.subject,
                    "k_star_error": relative(result.k_star, ref.k_star),
                    "v_star_error": relative(result.v_star, ref.v_star),
                    "delta_w_error": delta_w_error(result, ref),
                    "final_loss": result.loss_trace[-1],
                    "final_loss_float64": ref.loss_trace[-1],
                    "v_star_seconds": result.timings["v_star"],
                }
            )
    return {
        "model": model,
        "device": str(device),
        "variant": variant,
        "seed": seed,
        "layer": hparams.layer,
        "c": "synthetic" if synthetic_c else "the model's statistics",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "rows": rows,
    }


def summary(data: dict[str, Any]) -> list[str]:
    lines = [
        f"{data['model']}, layer {data['layer']}, {data['variant']}, {data['device']} "
        f"({data['torch_threads']} threads), C: {data['c']}, seed {data['seed']}",
        "",
        "| precision | subject | k* err | v* err | ΔW err | last loss (float64) | v* s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['precision']} | {r['subject']} | {r['k_star_error']:.1e} | "
            f"{r['v_star_error']:.1e} | {r['delta_w_error']:.1e} | "
            f"{r['final_loss']:.4f} ({r['final_loss_float64']:.4f}) | {r['v_star_seconds']:.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variant", default="r-rome")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--synthetic-c",
        action="store_true",
        help="a seeded synthetic C instead of the model's statistics (random models)",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows mean float32
    data = run(args.model, torch.device(args.device), args.variant, args.seed, args.synthetic_c)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = summary(data)
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
