"""The float32/float64 table of docs/results/batched-solve.md: ``python -m
tests.batched_solve_report`` (this package's solves against rome_ref.batched on the same
batches; the differences measured, not asserted; tests/test_batch_solve.py asserts them)."""

from __future__ import annotations

import numpy as np
import torch

from rome_fast.testing_batch.battery import null_threshold
from rome_fast.testing_batch.cases import Batch, BatchParams, make_batch
from rome_fast.testing_batch.ours import alphaedit, emmet, memit
from rome_ref import batched as rb
from tests.batch_strategies import alphaedit_kappa, emmet_kappa, memit_kappa

D_IN, D_OUT, N, SEEDS = 256, 128, 32, 5
LAM, LAM_M, ALPHA = 15000.0, 1e4, 10.0  # MEMIT's λ (GPT-J), EMMET's λₘ with λₑ = 0, AlphaEdit's α


def relative_error(fast: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.linalg.norm(fast.double().numpy() - ref) / np.linalg.norm(ref))


def errors(b: Batch, nb: Batch, dtype: torch.dtype) -> dict[str, tuple[float, float]]:
    """Per method: (relative error against the reference, that error over ε(dtype) κ)."""

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.tensor(x, dtype=dtype)

    eps = float(torch.finfo(dtype).eps)
    R, Rn = b.residuals(), nb.residuals()
    runs = {
        "MEMIT": (
            memit(t(b.C), t(b.K), t(R), LAM).delta(),
            rb.memit_delta(b.C, b.K, R, LAM),
            memit_kappa(b, LAM),
        ),
        "EMMET λₑ=0": (
            emmet(t(b.C), t(b.K), t(R), LAM_M, 0.0).delta(),
            rb.emmet_delta(b.C, b.K, R, LAM_M, 0.0),
            emmet_kappa(b, LAM_M, 0.0),
        ),
        "AlphaEdit": (
            alphaedit(t(nb.C), t(nb.K), t(Rn), null_threshold(nb), ALPHA, None).delta(),
            rb.alphaedit_delta(nb.null_basis @ nb.null_basis.T, nb.K, Rn, ALPHA),
            alphaedit_kappa(nb, ALPHA),
        ),
    }
    return {
        name: (relative_error(fast, ref), relative_error(fast, ref) / (eps * kappa))
        for name, (fast, ref, kappa) in runs.items()
    }


def table() -> str:
    methods = ("MEMIT", "EMMET λₑ=0", "AlphaEdit")
    head = " | ".join(f"{m} f32 | {m} f64" for m in methods)
    lines = [f"| κ(C) | κ(C^-½K) | {head} |", "|---" * (2 + 2 * len(methods)) + "|"]
    ratios: dict[torch.dtype, float] = {torch.float32: 0.0, torch.float64: 0.0}
    for log10_cond in (1, 3, 5, 7):
        for log10_key_cond in (0.0, 1.0, 2.0):
            worst: dict[tuple[str, torch.dtype], float] = {}
            for seed in range(SEEDS):
                p = BatchParams(seed, D_IN, D_OUT, N, log10_cond, log10_key_cond, 0, False)
                b, nb = make_batch(p), make_batch(BatchParams(**{**p.__dict__, "null_dim": 96}))
                for dtype in tuple(ratios):
                    for name, (error, ratio) in errors(b, nb, dtype).items():
                        worst[name, dtype] = max(worst.get((name, dtype), 0.0), error)
                        ratios[dtype] = max(ratios[dtype], ratio)
            cells = " | ".join(
                f"{worst[m, torch.float32]:.1e} | {worst[m, torch.float64]:.1e}" for m in methods
            )
            lines.append(f"| 1e{log10_cond} | 1e{log10_key_cond:g} | {cells} |")
    lines.append("")
    lines.append(
        "Largest error / (ε κ), κ as in the battery: "
        + ", ".join(f"{dtype}: {ratio:.3g}" for dtype, ratio in ratios.items())
    )
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(table())
