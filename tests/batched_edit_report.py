"""The batched editor measured on CounterFact facts: the tables of docs/results/batched-keys.md
and docs/results/batched-smollm2.md.

``python -m tests.batched_edit_report --table keys --facts 16 --out docs/results/batched-keys.md``:
MEMIT with each key choice (the public ``memit``, ½ bare + ½ prefix mean with the residual
measured at the bare prompt, against the homogeneous ``k_star`` and ``k_prompt``), each fact's
relative residual at its k* and at its bare-prompt key after the edit, and efficacy.

``python -m tests.batched_edit_report --table methods --facts 64 --out
docs/results/batched-smollm2.md``: MEMIT, EMMET and AlphaEdit at the layers the editor picks
for the model: efficacy, paraphrase and neighborhood success (the single edits' metrics,
``rome_fast.eval.case_scoring``), |ΔW| and conditioning per edited layer, seconds per fact.

Every batch is written on the unedited model (``Editor.restore`` between them); the facts are
the first ``--facts`` records of ``--data`` (a path, or one under ``$ROME_DATA_DIR``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rome_fast.edit.batch_edit import BatchTargetsLike
from rome_fast.edit.batch_keys import KEY_CHOICES
from rome_fast.edit.batch_result import BatchResult
from rome_fast.edit.editor import Editor
from rome_fast.edit.request import EditRequest
from rome_fast.eval.case_scoring import metrics_of, score_case
from rome_fast.eval.data import EvalCase, load_cases, resolve_data_path
from rome_fast.hparams.batched import METHODS
from rome_fast.hparams.defaults import HParams, hparams_for
from rome_fast.infra.datadir import DATA_ENV
from rome_fast.model.loader import LoadedModel, load_model

SCORE_BATCH = 16  # prompts per forward pass when scoring
SUCCESS = ("ES", "PS", "NS")  # efficacy, paraphrase and neighborhood success (percent)


class SharedTargets(Editor):
    """An editor whose batches share their targets: Z (d, n) depends on the model, the facts
    and the last edited layer only, not on the method or the key choice, and every batch here
    starts from the unedited model (bit-identical after ``restore``), so it is optimized once
    per layer; ``seconds`` adds that optimization's time to every batch that used it."""

    def __init__(self, loaded: LoadedModel, hparams: HParams) -> None:
        super().__init__(loaded, hparams=hparams, seed=0)
        self._targets: dict[tuple[int, tuple[EditRequest, ...]], BatchTargetsLike] = {}
        self._target_seconds: dict[int, float] = {}

    def _batch_targets(
        self, requests: Sequence[EditRequest], templates: list[str], layer: int
    ) -> BatchTargetsLike:
        key = (layer, tuple(requests))
        if key not in self._targets:
            start = time.perf_counter()
            self._targets[key] = super()._batch_targets(requests, templates, layer)
            self._target_seconds[layer] = time.perf_counter() - start
        return self._targets[key]

    def seconds_per_fact(self, result: BatchResult) -> float:
        """The batch's seconds with its targets' optimization counted in full, per fact."""
        layer = result.update.sites[-1].layer
        shared = result.edit_seconds - result.timings["targets"] + self._target_seconds[layer]
        return shared / len(result.facts)


def success(loaded: LoadedModel, cases: Sequence[EvalCase]) -> dict[str, float]:
    """ES, PS and NS over ``cases`` (percent) on the model as it is now."""
    per_case = [
        metrics_of(score_case(loaded.model, loaded.tokenizer, case, SCORE_BATCH)) for case in cases
    ]
    return {name: 100 * statistics.fmean(m[name] for m in per_case) for name in SUCCESS}


def _mean_max(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3g} / {max(values):.3g}"


def keys_table(editor: SharedTargets, cases: Sequence[EvalCase]) -> list[str]:
    """One row per key choice: the facts' residuals (mean / max) at k* and k_prompt, and ES."""
    lines = [
        "| key choice | residual at k* (mean / max) | residual at k_prompt (mean / max) "
        "| ES after (%) | seconds per fact |",
        "|---|---|---|---|---|",
    ]
    for choice in KEY_CHOICES[::-1]:  # the public choice first
        result = _edited(editor, cases, "memit", choice)
        at_star = [fact.relative_residual_k_star for fact in result.facts]
        at_prompt = [fact.relative_residual_k_prompt for fact in result.facts]
        efficacy = success(editor.loaded, cases)["ES"]
        editor.restore()
        lines.append(
            f"| {choice} | {_mean_max(at_star)} | {_mean_max(at_prompt)} | {efficacy:.1f} "
            f"| {editor.seconds_per_fact(result):.2f} |"
        )
        print(lines[-1], flush=True)
    return lines


def methods_table(editor: SharedTargets, cases: Sequence[EvalCase]) -> list[str]:
    """One row per method with the public keys: ES/PS/NS, then each edited layer's |ΔW| and
    conditioning (smallest and largest eigenvalue of the Gram matrix, κ of the solved system)."""
    lines = [
        "| method | layers | ES (%) | PS (%) | NS (%) | seconds per fact | per layer: \\|ΔW\\| "
        "(‖ΔW‖_F / numel), Gram eigenvalues min–max, κ(system) |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        result = _edited(editor, cases, method, "memit")
        scores = success(editor.loaded, cases)
        editor.restore()
        record = result.as_record()
        layers = ", ".join(str(site["layer"]) for site in record["sites"])
        per_layer = "; ".join(_site_cell(site) for site in record["sites"])
        rates = " | ".join(f"{scores[name]:.1f}" for name in SUCCESS)
        lines.append(
            f"| {method} | {layers} | {rates} | {editor.seconds_per_fact(result):.2f} "
            f"| {per_layer} |"
        )
        print(lines[-1], flush=True)
    return lines


def _site_cell(site: dict[str, object]) -> str:
    cond = site["conditioning"]
    assert isinstance(cond, dict)
    return (
        f"L{site['layer']}: {site['delta_norm']:.2e}, "
        f"{cond['gram_min']:.3g}–{cond['gram_max']:.3g}, {cond['system_cond']:.3g}"
    )


def _edited(
    editor: SharedTargets, cases: Sequence[EvalCase], method: str, keys: str
) -> BatchResult:
    return editor.edit_batch([case.request() for case in cases], method, keys=keys)


TABLES: dict[str, tuple[str, Callable[[SharedTargets, Sequence[EvalCase]], list[str]]]] = {
    "keys": ("MEMIT's key choices", keys_table),
    "methods": ("MEMIT, EMMET and AlphaEdit", methods_table),
}


def _commit() -> str:
    found = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return found.stdout.strip() or "unknown"


def data_source(spec: str) -> tuple[str, str]:
    """The command's prefix and a description of where ``--data`` was found: as given, or under
    ``$ROME_DATA_DIR`` (named, not its path), and how many records the file holds, which tells
    the full file from a sample of it."""
    file = resolve_data_path(spec)
    records = f"{len(load_cases(file)):,} records"
    if file == Path(spec):
        return "", f"`{spec}` ({records})"
    return f"{DATA_ENV}=<data folder> ", f"`{spec}` under `${DATA_ENV}` ({records})"


def provenance(args: argparse.Namespace) -> str:
    """The command, the machine, the commit and the date, as the table's first paragraph."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    steps = "" if args.v_steps is None else f" --v-steps {args.v_steps}"
    prefix, data = data_source(args.data)
    return (
        f"Written by `{prefix}python -m tests.batched_edit_report --table {args.table} --model "
        f"{args.model} --facts {args.facts} --data {args.data}{steps} --out {args.out}` "
        f"({platform.machine()} CPU, {os.cpu_count()} cores shared with other work, load "
        f"average {load} at the end; commit {_commit()}, {datetime.date.today().isoformat()}). "
        f"One batch of the first {args.facts} facts of {data}, written on the unedited "
        "model, editor seed 0, the model's default hyperparameters (ROME's `HParams` for the "
        "targets, `rome_fast.hparams.batched` for each method)."
    )


NOTES = "## What it shows"  # the reading of the numbers, written by hand below the table


def kept_notes(out: Path) -> list[str]:
    """The hand-written section of an earlier ``out`` (from ``NOTES`` on), kept on rewrite."""
    if not out.is_file():
        return []
    text = out.read_text().split(NOTES, 1)
    return [NOTES + text[1].rstrip("\n"), ""] if len(text) == 2 else []


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", choices=sorted(TABLES), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--facts", type=int, default=16)
    parser.add_argument("--data", default="counterfact/counterfact-edit.json")
    parser.add_argument(
        "--v-steps", type=int, help="Adam steps of the target optimization (default: the model's)"
    )
    args = parser.parse_args(argv)
    title, make = TABLES[args.table]
    cases = load_cases(args.data, limit=args.facts)
    hparams = hparams_for(args.model)
    if args.v_steps is not None:
        hparams = hparams.replace(v_num_grad_steps=args.v_steps)
    editor = SharedTargets(load_model(args.model), hparams)
    before = success(editor.loaded, cases)
    rows = make(editor, cases)
    unedited = ", ".join(f"{name} {before[name]:.1f}" for name in SUCCESS)
    text = [
        f"# The batched editor on {args.model}: {title}",
        "",
        provenance(args),
        "",
        *rows,
        "",
        f"Unedited model on the same facts (%): {unedited}.",
        "",
        *kept_notes(args.out),
    ]
    args.out.write_text("\n".join(text))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
