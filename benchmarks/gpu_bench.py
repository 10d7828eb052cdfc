"""Every GPU check and benchmark in one run, for a lent H100/H200 (about 5 minutes there).

    python -m benchmarks.gpu_bench --out runs/gpu            # on the GPU machine
    python -m benchmarks.gpu_bench --out runs/gpu-tiny --tiny     # rehearsal on CPU, tiny shapes

Sections, each written to ``results.json`` and ``summary.md`` in ``--out`` as soon as it ends
(so a run cut short keeps what it finished):

1. machine: card name, vendor peaks, measured copy bandwidth and matmul flop/s;
2. accuracy: rome_fast's ΔW on the device against rome_ref (float64, CPU) on the same inputs,
   float32 with TF32 off and on, and with a bfloat16 W0;
3. C solve: explicit inverse vs Cholesky at the real key widths;
4. in-place update ``W += l rᵀ`` on GPT-J's fc_out: dense ΔW, ``apply_rank_one``, ``addr_``,
   as achieved bandwidth and fraction of the card's peak;
5. edits on random-weight GPT-J-6B and GPT2-XL shapes (stats and templates cached): the naive
   yardstick and the fast editor in the same run (float32, then the v* loop in TF32 and in
   bf16), each one's ratio to naive, the floor, and ΔW against the float32 fast edit;
6. batch edits: the batched editor (MEMIT at GPT-J's public layers 3–8) on 1000 facts against
   its yardstick (one δ per fact, full forward passes) on 16, seconds per fact
   (``benchmarks.gpu_batch``);
7. statistics collection at GPT-J's layer 5 vs a full forward pass, tokens/s.

Every random choice is seeded (``--seed``). Nothing is downloaded: models are random
(``rome_fast.model.loader.random_model``) and C is a synthetic SPD matrix (timing does not depend
on where C came from).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench_edit import IMPLS, edit_floor
from benchmarks.bench_solve import relative_residual
from benchmarks.conftest import REQUEST, make_setup, synthetic_second_moment
from benchmarks.floors import (
    CARD_SPECS,
    Peaks,
    floor,
    full_forward_flops,
    machine_peaks,
    matrix_params,
    model_dtype,
    rank_one_apply_floor,
    stats_floor,
)
from benchmarks.gpu_batch import batch_edits
from benchmarks.precision import delta_w_error
from benchmarks.timing import timed
from rome_fast.edit.editor import Editor
from rome_fast.edit.naive import NaiveEditor, naive_inverse
from rome_fast.edit.templates import generate_context_templates
from rome_fast.hparams.defaults import hparams_for
from rome_fast.methods.rome.update import CovarianceFactor, RankOne, rank_one_factors
from rome_fast.model.loader import random_model
from rome_fast.model.weights import apply_rank_one, weight_matrix
from rome_fast.stats.collect import collect_second_moment
from rome_fast.stats.corpus import from_texts
from rome_ref.update import rank_one_update as ref_update


@dataclass(frozen=True)
class Plan:
    """What one run measures. FULL: the paper's models; TINY: the same code paths, tiny."""

    edit_models: tuple[str, ...]
    stats_model: str
    accuracy_shape: tuple[int, int]
    solve_dims: tuple[int, ...]
    apply_shape: tuple[int, int]
    stats_docs: int
    stats_length: int
    fast_rounds: int
    batch_facts: tuple[int, int]  # the batched section's facts: (yardstick, batched editor)
    batch_steps: int | None  # its target iterations (None: the model's own)


FULL = Plan(
    ("gpt-j-6b", "gpt2-xl"),
    "gpt-j-6b",
    (1600, 6400),
    (6400, 16384),
    (4096, 16384),
    32,
    1024,
    3,
    (16, 1000),
    None,
)
TINY = Plan(
    ("tiny-gptj", "tiny-gpt2"), "tiny-gptj", (64, 256), (256,), (256, 1024), 8, 64, 2, (2, 8), 3
)


class Report:
    """Accumulates sections; rewrites results.json and summary.md after each one."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out, self.meta = out, meta
        self.sections: dict[str, Any] = {}
        self.lines: list[str] = []
        out.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, data: Any, lines: list[str]) -> None:
        self.sections[name] = data
        self.lines += [f"## {name}", "", *lines, ""]
        print("\n".join([f"## {name}", *lines]), flush=True)
        self.write()

    def write(self) -> None:
        payload = {"meta": self.meta, "sections": self.sections}
        (self.out / "results.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
        head = [
            f"# GPU benchmark: {self.meta['device_name']}",
            "",
            f"torch {self.meta['torch']}, seed {self.meta['seed']}, "
            f"mode {'tiny (rehearsal)' if self.meta['tiny'] else 'full'}",
            "",
        ]
        (self.out / "summary.md").write_text("\n".join(head + self.lines) + "\n")


# ----------------------------------------------------------------------------- sections


def machine(peaks: Peaks) -> tuple[dict[str, Any], list[str]]:
    p = peaks.as_dict()
    return p, [
        f"- {peaks.name}; peaks used for floors: {peaks.bandwidth / 1e9:.0f} GB/s, "
        f"{peaks.flops_fp32 / 1e12:.1f} TFLOP/s fp32, {peaks.flops_bf16 / 1e12:.1f} "
        f"TFLOP/s bf16 ({peaks.source})",
        f"- measured: copy {peaks.measured_bandwidth / 1e9:.0f} GB/s, float32 matmul "
        f"{peaks.measured_flops_fp32 / 1e12:.2f} TFLOP/s (TF32 as configured)",
    ]


def accuracy(device: torch.device, shape: tuple[int, int], seed: int) -> tuple[Any, list[str]]:
    d_out, d_in = shape
    g = torch.Generator().manual_seed(seed)
    W0 = torch.randn(d_out, d_in, generator=g, dtype=torch.float64) / d_in**0.5
    C = synthetic_second_moment(d_in, seed, device).double().cpu()
    k_star, k_prompt = (
        torch.randn(d_in, generator=g).double(),
        torch.randn(d_in, generator=g).double(),
    )
    v_star = torch.randn(d_out, generator=g).double()
    rows, lines = (
        [],
        ["| variant | W0 dtype | TF32 | rel. error of ΔW vs rome_ref |", "|---|---|---|---|"],
    )
    for variant in ("rome", "r-rome", "p-rome"):
        expected = ref_update(
            W0.numpy(), C.numpy(), k_star.numpy(), k_prompt.numpy(), v_star.numpy(), variant
        )
        for w_dtype, tf32 in (
            (torch.float32, False),
            (torch.float32, True),
            (torch.bfloat16, False),
        ):
            if tf32 and device.type != "cuda":
                continue
            torch.backends.cuda.matmul.allow_tf32 = tf32
            W = W0.to(device=device, dtype=w_dtype)
            cov = CovarianceFactor.from_matrix(C.to(device=device, dtype=torch.float32))
            r = rank_one_factors(
                W, cov, k_star.to(device), k_prompt.to(device), v_star.to(device), variant
            )
            got = r.delta().double().cpu().numpy()
            if w_dtype == torch.bfloat16:  # the reference on the same rounded weights
                expected_here = ref_update(
                    W.double().cpu().numpy(),
                    C.numpy(),
                    k_star.numpy(),
                    k_prompt.numpy(),
                    v_star.numpy(),
                    variant,
                )
            else:
                expected_here = expected
            error = float(np.linalg.norm(got - expected_here) / np.linalg.norm(expected_here))
            rows.append(
                {"variant": variant, "w_dtype": str(w_dtype), "tf32": tf32, "relative_error": error}
            )
            lines.append(f"| {variant} | {w_dtype} | {'on' if tf32 else 'off'} | {error:.2e} |")
    torch.backends.cuda.matmul.allow_tf32 = False
    return rows, lines


def solve(device: torch.device, dims: tuple[int, ...], seed: int) -> tuple[Any, list[str]]:
    rows, lines = (
        [],
        [
            "| d | inverse s | Cholesky s | ratio | ‖Cu−k‖/‖k‖ inverse | Cholesky |",
            "|---|---|---|---|---|---|",
        ],
    )
    for d in dims:
        C = synthetic_second_moment(d, seed, device)
        k = torch.randn(d, generator=torch.Generator().manual_seed(seed)).to(device)

        def invert(C: torch.Tensor = C) -> torch.Tensor:
            return naive_inverse(C)

        def factor(C: torch.Tensor = C) -> CovarianceFactor:
            return CovarianceFactor.from_matrix(C, dtype=torch.float32)

        inv, chol = timed(invert, device, rounds=2), timed(factor, device, rounds=2)
        u_inv = inv["result"] @ k
        u_chol = chol["result"].solve(k)
        C64 = C.double()  # once: at d = 16384 it is 2 GiB
        res = [relative_residual(C64, u, k) for u in (u_inv, u_chol)]
        rows.append(
            {
                "d": d,
                "inverse": inv["seconds"],
                "cholesky": chol["seconds"],
                "residual_inverse": res[0],
                "residual_cholesky": res[1],
            }
        )
        lines.append(
            f"| {d} | {inv['median']:.4f} | {chol['median']:.4f} | "
            f"{inv['median'] / chol['median']:.2f} | {res[0]:.1e} | {res[1]:.1e} |"
        )
        del C
    return rows, lines


def apply_bandwidth(
    device: torch.device, shape: tuple[int, int], peaks: Peaks
) -> tuple[Any, list[str]]:
    d_out, d_in = shape
    rows, lines = (
        [],
        [
            "| dtype | method | s | achieved GB/s (2·W bytes / s) | of peak |",
            "|---|---|---|---|---|",
        ],
    )
    for dtype in (torch.float32, torch.bfloat16):
        module = torch.nn.Linear(d_in, d_out, bias=False, device=device, dtype=dtype)
        module.requires_grad_(False)
        W = module.weight
        r = RankOne(
            torch.randn(d_out, device=device) * 1e-6,
            torch.randn(d_in, device=device),
            torch.tensor(1.0),
        )
        lo, ro = r.left.to(dtype), r.right.to(dtype)

        def dense(W: torch.Tensor = W, lo: torch.Tensor = lo, ro: torch.Tensor = ro) -> None:
            W.add_(lo[:, None] @ ro[None, :])  # the public code: dense ΔW, then add

        def factors(module: torch.nn.Module = module, r: RankOne = r) -> None:
            apply_rank_one(module, r)

        def ger(W: torch.Tensor = W, lo: torch.Tensor = lo, ro: torch.Tensor = ro) -> None:
            W.addr_(lo, ro)  # BLAS ger: one pass over W

        methods: dict[str, Callable[[], None]] = {
            "dense ΔW (public code)": dense,
            "apply_rank_one": factors,
            "addr_": ger,
        }
        bound = rank_one_apply_floor(peaks, d_out, d_in, dtype)
        w_bytes = 2 * W.numel() * W.element_size()  # read once, written once
        for name, fn in methods.items():
            t = timed(fn, device, rounds=20, warmup=3)
            achieved = w_bytes / t["median"]
            rows.append(
                {
                    "dtype": str(dtype),
                    "method": name,
                    "seconds": t["seconds"],
                    "floor_seconds": bound.seconds,
                    "achieved_bandwidth": achieved,
                    "fraction_of_peak": achieved / peaks.bandwidth,
                }
            )
            lines.append(
                f"| {dtype} | {name} | {t['median']:.2e} | {achieved / 1e9:.1f} | "
                f"{achieved / peaks.bandwidth:.0%} |"
            )
        del module, W
    return rows, lines


def edits(
    device: torch.device, models: tuple[str, ...], peaks: Peaks, seed: int, fast_rounds: int
) -> tuple[Any, list[str]]:
    rows, lines = (
        [],
        [
            "| model | impl | edit s (median) | phases | naive/this | floor s | of floor "
            "| ΔW vs fast fp32 |",
            "|---|---|---|---|---|---|---|---|",
        ],
    )
    for name in models:
        loaded = random_model(name, seed=seed, device=device)
        hparams = hparams_for(f"random:{name}")
        setup = make_setup(loaded, hparams, seed)
        templates, C = setup.templates, setup.C
        measured: dict[str, tuple[dict[str, Any], Any]] = {}  # impl -> (timing, result)
        for impl, (cls, precision) in IMPLS.items():
            if precision == "tf32" and device.type != "cuda":
                continue
            editor = cls(
                loaded,
                hparams=hparams.replace(v_precision=precision),
                seed=seed,
                stats=C,
                templates=templates,
            )
            editor.covariance(hparams.layer)
            if isinstance(editor, NaiveEditor):
                editor.inverse_covariance(hparams.layer)

            def one_edit(editor: Editor = editor) -> Any:
                result = editor.edit(REQUEST, "r-rome")
                editor.restore()
                return result

            t = timed(one_edit, device, rounds=1 if impl == "naive" else fast_rounds)
            measured[impl] = (t, t.pop("result"))
        means = {impl: t["median"] for impl, (t, _) in measured.items()}
        for impl, (t, result) in measured.items():
            precision = IMPLS[impl][1]
            bound = edit_floor(
                peaks, loaded, hparams.layer, templates, hparams.v_star.num_grad_steps, precision
            )
            # What a lower precision costs: ΔW against this run's float32 fast edit.
            error = delta_w_error(result, measured["fast"][1])
            phases = {k: round(v, 4) for k, v in result.timings.items()}
            rows.append(
                {
                    "model": name,
                    "impl": impl,
                    "v_precision": precision,
                    **t,
                    "phases": phases,
                    "forwards": len(result.loss_trace),
                    "floor": bound.as_dict(),
                    "dtype": str(model_dtype(loaded)),
                    "delta_w_error_vs_fast_fp32": error,
                }
            )
            lines.append(
                f"| {name} | {impl} | {t['median']:.3f} | {phases} | "
                f"{means['naive'] / t['median']:.1f}× | {bound.seconds:.3f} | "
                f"{bound.seconds / t['median']:.1%} | {error:.1e} |"
            )
        ratio = means["naive"] / means["fast"]
        rows.append({"model": name, "speedup_fast_vs_naive": ratio})
        lines.append(f"| {name} | naive/fast (both fp32) | | | {ratio:.1f}× | | | |")
        del loaded, setup, C
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows, lines


def stats(
    device: torch.device, name: str, peaks: Peaks, seed: int, n_docs: int, length: int
) -> tuple[Any, list[str]]:
    loaded = random_model(name, seed=seed, device=device)
    layer = hparams_for(f"random:{name}").layer
    rng = np.random.default_rng(seed)
    vocab = loaded.tokenizer.vocab_size
    # Token ids decoded to text; truncation at ``length`` keeps every document full length.
    texts = [
        str(loaded.tokenizer.decode(rng.integers(0, vocab, 2 * length).tolist()))
        for _ in range(n_docs)
    ]
    corpus = from_texts(texts, name="gpu-bench")
    batch = 8
    docs = [loaded.tokenizer(t, truncation=True, max_length=length)["input_ids"] for t in texts]
    tokens = sum(len(d) for d in docs)

    def full_forward() -> None:
        with torch.inference_mode():
            for first in range(0, n_docs, batch):
                rows = docs[first : first + batch]
                width = max(len(r) for r in rows)
                ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)
                loaded.model(input_ids=ids, use_cache=False)

    def collect() -> Any:
        return collect_second_moment(
            loaded,
            layer,
            corpus,
            n_samples=n_docs,
            batch_size=batch,
            max_length=length,
            progress=False,
        )

    d_in = int(weight_matrix(loaded.adapter.edited_module(loaded.model, layer)).shape[1])
    full = timed(full_forward, device, rounds=2)
    fast = timed(collect, device, rounds=2)
    bound = stats_floor(peaks, loaded, layer, tokens, d_in)
    full_flops = 2.0 * tokens * matrix_params(list(loaded.adapter.layers(loaded.model)))
    full_bound = floor(
        peaks,
        bytes_moved=0,
        flops=full_flops,
        dtype=model_dtype(loaded),
        basis="full forward, blocks only",
    )
    rows = {
        "model": name,
        "layer": layer,
        "tokens": tokens,
        "full_forward_tokens_per_s": tokens / full["median"],
        "collect_tokens_per_s": tokens / fast["median"],
        "ratio": full["median"] / fast["median"],
        "floor": bound.as_dict(),
        "full_forward_floor": full_bound.as_dict(),
    }
    lines = [
        f"- {name} layer {layer}, {tokens} tokens: full forward "
        f"{tokens / full['median']:.0f} tok/s, collection {tokens / fast['median']:.0f} tok/s "
        f"({rows['ratio']:.2f}× the full forward; target ≥ 3×); collection floor "
        f"{tokens / bound.seconds:.0f} tok/s ({bound.seconds / fast['median']:.0%} of it reached)"
    ]
    return rows, lines


def spec_peaks(card: str) -> Peaks:
    """A card's vendor peaks, for floors computed without the card."""
    if card not in CARD_SPECS:
        raise ValueError(f"unknown card {card!r}; known: {', '.join(CARD_SPECS)}")
    n = CARD_SPECS[card]
    return Peaks(
        "cuda",
        card,
        n["bandwidth"],
        n["fp32"],
        n["bf16"],
        float("nan"),
        float("nan"),
        f"vendor spec ({card}), nothing measured",
        0,
        50 << 20,
        n["tf32"],
    )


def paper_floors(card: str, seed: int) -> tuple[Any, list[str]]:
    """Floors of the full plan on ``card``, from parameter counts (meta-device models) and the
    token counts of templates sampled from a tiny model with the same tokenizer and schedule."""
    peaks = spec_peaks(card)
    proxy = random_model("tiny-gptj", seed=seed)
    templates = generate_context_templates(proxy.model, proxy.tokenizer, seed=seed)
    rows, lines = (
        [],
        [
            f"Vendor peaks of {card}: {peaks.bandwidth / 1e12:.2f} TB/s, "
            f"{peaks.flops_fp32 / 1e12:.0f} TFLOP/s fp32, "
            f"{peaks.flops_bf16 / 1e12:.0f} TFLOP/s bf16 (dense).",
            "",
        ],
    )
    for name in FULL.edit_models:
        meta = random_model(name, seed=seed, device="meta")
        meta.tokenizer = proxy.tokenizer
        layer = hparams_for(f"random:{name}").layer
        for dtype in (torch.float32, torch.bfloat16):
            meta.model.to(dtype)
            bound = edit_floor(peaks, meta, layer, templates, 20)
            W = weight_matrix(meta.adapter.edited_module(meta.model, layer))
            apply = rank_one_apply_floor(peaks, int(W.shape[0]), int(W.shape[1]), dtype)
            rows.append(
                {
                    "model": name,
                    "dtype": str(dtype),
                    "edit_floor": bound.as_dict(),
                    "apply_floor": apply.as_dict(),
                }
            )
            lines.append(
                f"- {name} {dtype}: edit floor {bound.seconds * 1e3:.1f} ms "
                f"({bound.flops / 1e12:.2f} TFLOP: {bound.basis}); in-place update "
                f"floor {apply.seconds * 1e6:.0f} µs ({apply.bytes / 1e6:.0f} MB)"
            )
        if name == FULL.stats_model:
            meta.model.to(torch.float32)
            tokens = FULL.stats_docs * FULL.stats_length
            d_in = int(weight_matrix(meta.adapter.edited_module(meta.model, layer)).shape[1])
            bound = stats_floor(peaks, meta, layer, tokens, d_in)
            full = full_forward_flops(meta, tokens) / peaks.flops_fp32
            rows.append(
                {"model": name, "stats_floor": bound.as_dict(), "full_forward_floor_seconds": full}
            )
            lines.append(
                f"- {name} layer {layer} statistics, float32: at most "
                f"{tokens / bound.seconds:.0f} tok/s ({bound.basis}); a full forward "
                f"pass at most {tokens / full:.0f} tok/s: ratio "
                f"{full / bound.seconds:.1f}× at the floors"
            )
    return rows, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for results.json, summary.md"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU rehearsal)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", default="", help="comma-separated sections to skip")
    parser.add_argument(
        "--floors-only",
        metavar="CARD",
        choices=sorted(CARD_SPECS),
        help="only compute the full plan's floors for this card (no GPU needed)",
    )
    args = parser.parse_args(argv)
    if args.floors_only:
        report = Report(
            args.out,
            {
                "device_name": f"{args.floors_only} (floors only)",
                "torch": torch.__version__,
                "seed": args.seed,
                "tiny": False,
            },
        )
        report.add("floors", *paper_floors(args.floors_only, args.seed))
        return 0
    plan = TINY if args.tiny else FULL
    device = torch.device(args.device)
    if device.type != "cuda" and not args.tiny:
        parser.error("no CUDA device: the full shapes need a GPU; pass --tiny to rehearse on CPU")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 unless a row says TF32
    torch.backends.cudnn.allow_tf32 = False
    peaks = machine_peaks(device, quick=args.tiny)  # a rehearsal: the shapes' peaks, not the card's
    report = Report(
        args.out,
        {
            "device_name": peaks.name,
            "torch": torch.__version__,
            "seed": args.seed,
            "tiny": args.tiny,
            "platform": platform.platform(),
        },
    )
    skip = set(filter(None, args.skip.split(",")))
    sections: list[tuple[str, Callable[[], tuple[Any, list[str]]]]] = [
        ("machine", lambda: machine(peaks)),
        ("accuracy", lambda: accuracy(device, plan.accuracy_shape, args.seed)),
        ("C solve", lambda: solve(device, plan.solve_dims, args.seed)),
        ("in-place update", lambda: apply_bandwidth(device, plan.apply_shape, peaks)),
        ("edits", lambda: edits(device, plan.edit_models, peaks, args.seed, plan.fast_rounds)),
        (
            "batch edits",
            lambda: batch_edits(
                device, plan.stats_model, plan.batch_facts, plan.batch_steps, peaks, args.seed
            ),
        ),
        (
            "stats",
            lambda: stats(
                device, plan.stats_model, peaks, args.seed, plan.stats_docs, plan.stats_length
            ),
        ),
    ]
    failed = 0
    for name, run in sections:
        if name in skip:
            continue
        start = time.perf_counter()
        try:
            data, lines = run()
        except Exception:  # keep going: one failed section must not lose the others
            failed += 1
            data, lines = {"error": traceback.format_exc()}, ["```", traceback.format_exc(), "```"]
        gc.collect()  # each section's models go before the next one loads its own
        if device.type == "cuda":
            torch.cuda.empty_cache()
        lines.append(f"\n({time.perf_counter() - start:.1f} s)")
        report.add(name, data, lines)
        print(f"## {name}", *lines, sep="\n", flush=True)  # what the run records, as it goes
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
