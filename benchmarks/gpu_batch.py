"""The batched editor's section of ``benchmarks.gpu_bench``: MEMIT at the model's own layers
(GPT-J: the public 3–8, λ = 15000) on n facts against the yardstick
(``benchmarks.naive_batch``: one δ per fact, full forward passes) on the first few of them,
seconds per fact each, and their ratio. The yardstick's cost per fact does not depend on n
(each fact is its own loop), so it runs on a handful; the batched editor on all n. The
templates are the public MEMIT code's shape (``batch_requests.TEMPLATES``), C a synthetic
SPD matrix per layer; one round each, the batched round including the factoring of each
layer's C (its first batch)."""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.batch_requests import TEMPLATES, facts
from benchmarks.bench_batch_edit import targets_floor
from benchmarks.conftest import synthetic_second_moment
from benchmarks.floors import Peaks
from benchmarks.naive_batch import NaiveBatchEditor
from benchmarks.timing import timed
from rome_fast.edit.batch_result import BatchResult
from rome_fast.edit.editor import Editor
from rome_fast.edit.request import EditRequest
from rome_fast.hparams.batched import method_hparams_at
from rome_fast.hparams.defaults import hparams_for
from rome_fast.model.loader import random_model


def batch_edits(
    device: torch.device,
    model: str,
    n_facts: tuple[int, int],
    steps: int | None,
    peaks: Peaks,
    seed: int,
) -> tuple[Any, list[str]]:
    """``n_facts``: (the yardstick's, the batched editor's); ``steps``: target iterations
    (None: the model's own)."""
    loaded = random_model(model, seed=seed, device=device)
    hparams = hparams_for(f"random:{model}")
    hparams = hparams if steps is None else hparams.replace(v_num_grad_steps=steps)
    method = method_hparams_at("memit", f"random:{model}", hparams.layer)
    d_in = loaded.adapter.edited_site(loaded.model, hparams.layer).d_in
    C = {layer: synthetic_second_moment(d_in, layer, device) for layer in method.layers}
    requests = facts(max(n_facts))
    rows: list[dict[str, Any]] = []
    for impl, cls, n in (("naive", NaiveBatchEditor, n_facts[0]), ("batched", Editor, n_facts[1])):
        editor = cls(
            loaded, hparams=hparams, seed=seed, templates=TEMPLATES, stats=lambda _m, i: C[i]
        )

        def one_batch(editor: Editor = editor, batch: list[EditRequest] = requests[:n]) -> Any:
            result = editor.edit_batch(batch, "memit", method_hparams=method)
            editor.restore()
            return result

        t = timed(one_batch, device, rounds=1, warmup=0)
        result: BatchResult = t.pop("result")
        bound = targets_floor(peaks, loaded, method.layers[-1], requests[:n])
        rows.append(
            {
                "model": model,
                "impl": impl,
                "facts": n,
                "layers": list(method.layers),
                **t,
                "seconds_per_fact": t["median"] / n,
                "phases": {k: round(v, 4) for k, v in result.timings.items()},
                "targets_floor": bound.as_dict(),
            }
        )
    ratio = rows[0]["seconds_per_fact"] / rows[1]["seconds_per_fact"]
    lines = [
        "| model | impl | facts | s | s per fact | phases | targets floor s |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['model']} | {r['impl']} | {r['facts']} | {r['median']:.2f} | "
            f"{r['seconds_per_fact']:.4f} | {r['phases']} | {r['targets_floor']['seconds']:.3f} |"
            for r in rows
        ),
        f"| {model} | naive/batched, per fact | | | **{ratio:.1f}×** | | |",
    ]
    return [*rows, {"model": model, "speedup_per_fact": ratio}], lines
