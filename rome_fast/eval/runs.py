"""Single and sequential CounterFact runs: per-case JSON lines, resumable, with collapse flags.

Run folder layout (``out``)::

    config.json                    every option, seeds, model, library versions
    reference.json                 generation entropy of the unedited model (collapse threshold)
    single-<variant>.jsonl         one line per case: pre/post scores, metrics, diagnostics
    sequential-<variant>.jsonl     the same, plus |Δ|, cumulative ‖W−W0‖, entropy, collapse
    sequential-<variant>.state.pt  edited weights after the last finished case (resume point)
    sequential-<variant>-final.jsonl  every case scored again after the last edit
    glue-<variant>.jsonl           downstream checks before the first edit and every K edits
    summary.json                   per mode and variant: ES … S, collapses, failures
    .lock                          the writing process (``rome_fast.eval.lock``)

Resuming: lines are appended and flushed one case at a time; a sequential run also
checkpoints the edited weights (atomically, after the line). On restart, anything past
the last checkpoint (or a half-written line) is dropped and recomputed, so no case is
lost or duplicated; a GLUE check missing at the checkpoint's step is redone. JSON files
are replaced atomically. A folder that cannot be resumed is refused before any file is
changed. ``tests/test_faults.py`` kills a run at every write and checks all of this.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from rome_fast.eval.data import Case
from rome_fast.eval.files import read_json_object, write_json
from rome_fast.eval.glue import evaluate_glue
from rome_fast.eval.lock import run_folder_lock
from rome_fast.eval.score import generate, target_nll
from rome_ref import metrics as ref

MODES = ("single", "sequential")
DEGRADE_MODES = ("none", "zero", "flip")


class SingleWork(Protocol):
    """The model-side work of a single-edit run, done in this process (:class:`Runner`
    itself) or by workers (``rome_fast.eval.distributed``); the loop orders and writes rows."""

    def single_row(self, variant: str, index: int) -> dict[str, Any]: ...


class StreamWork(Protocol):
    """The model-side work of a sequential stream, here or on one worker (as ``SingleWork``)."""

    def begin_stream(self, variant: str, weights: Mapping[str, torch.Tensor]) -> None: ...

    def stream_row(self, variant: str, index: int) -> dict[str, Any]: ...

    def edited_weights(self) -> dict[str, torch.Tensor]: ...

    def glue_scores(self) -> dict[str, Any]: ...

    def final_row(self, index: int) -> dict[str, Any]: ...

    def end_stream(self) -> None: ...


class EditorLike(Protocol):
    """What runs need from :class:`rome_fast.editor.Editor` (ARCHITECTURE.md)."""

    def edit(self, request: Any, variant: str = ...) -> Any: ...

    def prepare(self, request: Any) -> Any: ...

    def apply(self, prepared: Any, variant: str = ...) -> Any: ...

    def revert(self, result: Any) -> None: ...

    def restore(self) -> None: ...


@dataclass(frozen=True)
class RunConfig:
    model: str
    data: str
    variants: tuple[str, ...] = ("rome", "r-rome", "p-rome")
    layer: int | None = None  # the edited layer (None: the model's default)
    impl: str = "fast"  # "naive": the public code's compute flow
    v_precision: str = "fp32"
    dtype: str = "float32"
    modes: tuple[str, ...] = ("single",)
    limit: int | None = None
    offset: int = 0
    seed: int = 0
    batch_size: int = 16
    n_generations: int = 10  # the paper's entropy uses ten generations per edit
    generation_tokens: int = 50
    collapse_factor: float = 10.0  # |Δ| above this × the running median flags a collapse
    collapse_min_history: int = 5  # edits needed before the |Δ| rule applies
    collapse_entropy_ratio: float = 0.5  # entropy below this × the unedited model's flags one
    collapse_entropy: float | None = None  # an absolute threshold instead of the ratio
    glue_every: int = 0  # 0: no downstream checks
    glue_data: str | None = None
    glue_n: int = 50
    glue_shots: int = 2
    checkpoint_every: int = 1
    degrade: str = "none"  # "zero" / "flip": a deliberately broken editor, to test the gate
    # Where C comes from: each changes every edit, so each is part of the run's identity.
    stats_npz: str | None = None
    stats_corpus: str | None = None
    stats_samples: int | None = None  # None: the model's default
    hparams: dict[str, Any] | None = None  # the editor's full hyperparameters, when known
    # The fixed context templates (--templates FILE; None: sampled from the model, seeded).
    templates: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {MODES}, got {self.modes}")
        if not self.variants:
            raise ValueError("give at least one variant")
        if self.degrade not in DEGRADE_MODES:
            raise ValueError(f"degrade must be one of {DEGRADE_MODES}, got {self.degrade!r}")
        if self.glue_every < 0 or self.checkpoint_every < 1 or self.n_generations < 1:
            raise ValueError("glue_every >= 0, checkpoint_every >= 1 and n_generations >= 1")
        if self.offset < 0 or (self.limit is not None and self.limit < 1):
            raise ValueError(f"offset >= 0 and limit >= 1, got {self.offset} and {self.limit}")
        if self.batch_size < 1 or self.generation_tokens < 1 or self.glue_n < 1:
            raise ValueError("batch_size, generation_tokens and glue_n must be at least 1")

    def comparable(self) -> dict[str, Any]:
        """The options a resumed run must share with the one it continues."""
        keep = asdict(self)
        keep.pop("checkpoint_every")
        return keep


# ---------------------------------------------------------------- scoring one case


def score_case(model: nn.Module, tokenizer: Any, case: Case, batch_size: int) -> dict[str, Any]:
    """NLLs of the new and the true target on the rewrite, paraphrase and neighborhood prompts."""
    groups = {
        "rewrite": ([case.rewrite_prompt], case.target_true),
        "paraphrase": (list(case.paraphrase_prompts), case.target_true),
        "neighborhood": (list(case.neighborhood_prompts), case.neighborhood_target),
    }
    prompts = [p for ps, _ in groups.values() for p in ps]
    true_targets = [t for ps, t in groups.values() for _ in ps]
    nll = target_nll(
        model,
        tokenizer,
        prompts + prompts,
        [case.target_new] * len(prompts) + true_targets,
        batch_size=batch_size,
    )
    new, true = nll[: len(prompts)], nll[len(prompts) :]
    out: dict[str, Any] = {}
    start = 0
    for name, (ps, _) in groups.items():
        stop = start + len(ps)
        out[name] = {"nll_new": new[start:stop].tolist(), "nll_true": true[start:stop].tolist()}
        start = stop
    return out


def metrics_of(scores: Mapping[str, Any]) -> dict[str, float]:
    pair = {k: (v["nll_new"], v["nll_true"]) for k, v in scores.items()}
    return ref.record_metrics(pair["rewrite"], pair["paraphrase"], pair["neighborhood"])


def generation_prompts(case: Case, n: int) -> list[str]:
    """``n`` prompts for the entropy check: the case's generation prompts, or (reduced
    schema, zsRE) its rewrite and paraphrase prompts, repeated in order."""
    pool = list(case.generation_prompts) or [case.rewrite_prompt, *case.paraphrase_prompts]
    return [pool[i % len(pool)] for i in range(n)]


def generation_check(
    model: nn.Module, tokenizer: Any, prompts: Sequence[str], cfg: RunConfig, seed: int
) -> dict[str, Any]:
    gen = generate(model, tokenizer, prompts, max_new_tokens=cfg.generation_tokens, seed=seed)
    vocab = int(model.get_output_embeddings().weight.shape[0])  # type: ignore[operator]
    return {
        "texts": gen.texts,
        "ngram_entropy": ref.generation_entropy(gen.texts),
        "unigram_entropy": ref.normalized_unigram_entropy(gen.token_ids, vocab),
    }


# ---------------------------------------------------------------- weights bookkeeping


def module_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The weight parameter of the submodule ``name``, as stored."""
    weight = model.get_submodule(name).weight
    assert isinstance(weight, torch.Tensor)
    return weight


class WeightGuard:
    """Copies of the editable weights taken before any edit: exact-restore checks,
    cumulative ‖W − W0‖, and a last-resort reset between variants."""

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.model = model
        self.original = {n: self._weight(n).detach().clone() for n in names}
        self.numel = max(w.numel() for w in self.original.values())

    def _weight(self, name: str) -> torch.Tensor:
        return module_weight(self.model, name)

    def require(self, name: str) -> None:
        if name not in self.original:
            raise RuntimeError(
                f"the editor changed {name!r}, which the run did not snapshot; "
                f"snapshotted: {sorted(self.original)}"
            )

    def changed(self) -> list[str]:
        return [n for n, w0 in self.original.items() if not torch.equal(self._weight(n), w0)]

    def check_restored(self, context: str) -> None:
        changed = self.changed()
        if changed:
            raise RuntimeError(f"{context}: weights not restored bit-exactly: {changed}")

    def distance(self) -> float:
        """‖W − W0‖_F over every snapshotted weight (orientation does not matter)."""
        total = sum(
            float((self._weight(n).double() - w0.double()).pow(2).sum())
            for n, w0 in self.original.items()
        )
        return math.sqrt(total)

    def current(self) -> dict[str, torch.Tensor]:
        return {n: self._weight(n).detach().clone() for n in self.changed()}

    def load(self, weights: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in weights.items():
                self.require(name)
                self._weight(name).copy_(value)

    def reset(self) -> None:
        self.load(self.original)


def editable_module_names(loaded: Any, editor: Any) -> list[str]:
    """The editor's layer if it states one (``editor.hparams.layer``), else every layer's."""
    layer = getattr(getattr(editor, "hparams", None), "layer", None)
    layers = [layer] if isinstance(layer, int) else range(loaded.adapter.n_layers(loaded.model))
    return [loaded.adapter.edited_module_name(i) for i in layers]


class DegradedEditor:
    """A deliberately broken editor for validating gates: ``zero`` leaves the model unchanged
    (each edit is reverted at once), ``flip`` applies −ΔW instead of ΔW."""

    def __init__(self, editor: Any, mode: str, model: nn.Module) -> None:
        if mode not in DEGRADE_MODES[1:]:
            raise ValueError(f"degrade mode must be 'zero' or 'flip', got {mode!r}")
        self.editor, self.mode, self.model = editor, mode, model
        self.hparams = getattr(editor, "hparams", None)
        # The weight as the editor last wrote it, before the latest flip: put back before
        # the editor undoes anything, which it would otherwise refuse as a foreign write.
        self._unflipped: dict[str, torch.Tensor] = {}

    def edit(self, request: Any, variant: str = "r-rome") -> Any:
        return self._degrade(self.editor.edit(request, variant=variant))

    def prepare(self, request: Any) -> Any:
        return self.editor.prepare(request)

    def apply(self, prepared: Any, variant: str = "r-rome") -> Any:
        return self._degrade(self.editor.apply(prepared, variant))

    def _degrade(self, result: Any) -> Any:
        if self.mode == "zero":
            self.editor.revert(result)
        else:
            from rome_fast.weights import apply_rank_one

            module = self.model.get_submodule(result.module_name)
            weight = module_weight(self.model, result.module_name)
            self._unflipped[result.module_name] = weight.detach().clone()
            apply_rank_one(module, result.rank_one, sign=-2.0)
        return result

    def _unflip(self) -> None:
        with torch.no_grad():
            for name, weight in self._unflipped.items():
                module_weight(self.model, name).copy_(weight)
        self._unflipped.clear()

    def revert(self, result: Any) -> None:
        self._unflip()
        self.editor.revert(result)

    def restore(self) -> None:
        self._unflip()
        self.editor.restore()


# ---------------------------------------------------------------- resumable JSON lines


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of ``path``; a half-written last line is ignored."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a kill while writing: this line and anything after it is redone
    return rows


TIMING_KEYS = frozenset({"timings", "edit_seconds"})  # wall-clock: differ between any two runs


def kernel_settings() -> dict[str, Any]:
    """What float32 CPU results round by, besides the inputs: intra-op threads and the
    measured oneDNN-or-MKL choice (``rome_fast.linear``), recorded with every run."""
    from rome_fast.linear import onednn_is_faster

    return {"threads": torch.get_num_threads(), "onednn": onednn_is_faster()}


def without_timings(value: Any) -> Any:
    """A record (or any JSON value) without its wall-clock times: what two runs of the same
    command, in one process or sharded over workers, must have in common."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def rewrite_lines(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def append_line(path: Path, row: Mapping[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _resume_rows(
    path: Path, cases: Sequence[Case], keep: int | None = None
) -> list[dict[str, Any]]:
    """The finished prefix of a case file (at most ``keep`` rows, and then exactly ``keep``),
    checked against ``cases`` before the file is cut to it: a refusal changes no file."""
    rows = read_lines(path)
    if keep is not None:
        rows = rows[:keep]
        if len(rows) != keep:
            raise ValueError(
                f"the checkpoint says {keep} edits are done but {path} holds {len(rows)} "
                "complete lines; the folder is damaged (no file was changed) — use a new --out"
            )
    for i, row in enumerate(rows):
        if i >= len(cases) or row.get("case_id") != cases[i].case_id:
            raise ValueError(
                f"{path}: line {i + 1} is case {row.get('case_id')!r}, but this run's "
                f"case {i} is {cases[i].case_id if i < len(cases) else None!r}; the "
                "folder belongs to another data slice — use a new --out"
            )
    rewrite_lines(path, rows)
    return rows


# ---------------------------------------------------------------- collapse detection


def collapse_reasons(
    delta_norm: float | None,
    history: Sequence[float],
    entropy: float,
    threshold: float,
    cfg: RunConfig,
) -> list[str]:
    """Why an edit looks disabling: |Δ| far above the running median, or entropy too low."""
    reasons = []
    if delta_norm is not None and len(history) >= cfg.collapse_min_history:
        median = statistics.median(history)
        if median > 0 and delta_norm > cfg.collapse_factor * median:
            reasons.append(
                f"|Δ| {delta_norm:.3g} > {cfg.collapse_factor:g} × running median {median:.3g}"
            )
    if entropy < threshold:
        reasons.append(f"generation entropy {entropy:.3g} < threshold {threshold:.3g}")
    return reasons


def entropy_threshold(reference: Mapping[str, Any], cfg: RunConfig) -> float:
    if cfg.collapse_entropy is not None:
        return cfg.collapse_entropy
    return cfg.collapse_entropy_ratio * float(reference["ngram_entropy"])


# ---------------------------------------------------------------- the runner


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - start


@dataclass
class Runner:
    """Runs ``cases`` through ``editor`` on ``loaded`` into the folder ``out``."""

    loaded: Any
    editor: EditorLike
    cases: Sequence[Case]
    cfg: RunConfig
    out: Path
    guard: WeightGuard = field(init=False)
    reference: dict[str, Any] = field(init=False)
    on_case: Callable[[str, str, int], None] | None = None  # test hook: (mode, variant, index)
    # A new editor for every mode and variant: a resumed sequential run loads weights the
    # editor never saw, so its record of W0 must not outlive that run.
    fresh_editor: Callable[[], EditorLike] | None = None
    progress: bool = True  # per-variant bars; a distributed driver shows one bar instead
    # Single-edit mode: per case index, what every variant shares (see _edit_and_score).
    _pre_scores: dict[int, Any] = field(init=False, default_factory=dict)
    _prepared: dict[int, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.editor = self._wrap(self.editor)
        self.guard = WeightGuard(self.model, editable_module_names(self.loaded, self.editor))

    def _wrap(self, editor: EditorLike) -> EditorLike:
        if self.cfg.degrade == "none":
            return editor
        return DegradedEditor(editor, self.cfg.degrade, self.model)

    @property
    def model(self) -> nn.Module:
        model = self.loaded.model
        assert isinstance(model, nn.Module)
        return model

    def _write_config(self) -> None:
        import transformers

        path = self.out / "config.json"
        # Through JSON once, so that tuples compare equal to the lists read back.
        config = json.loads(
            json.dumps({"run": self.cfg.comparable(), "cases": [c.case_id for c in self.cases]})
        )
        if path.exists():
            previous = read_json_object(path, "run configuration")
            if previous.get("cases") != config["cases"]:
                raise ValueError(
                    f"{path} records a different slice of cases; resume with the same "
                    "--data/--offset/--limit or choose a new --out"
                )
            before = previous.get("run", {})
            differ = sorted(
                k for k in set(before) | set(config["run"]) if before.get(k) != config["run"].get(k)
            )
            if differ:
                raise ValueError(
                    f"{path} records a different run (differs in "
                    + ", ".join(
                        f"{k}: {before.get(k)!r} there, {config['run'].get(k)!r} now"
                        for k in differ
                    )
                    + "); resume with the same options or choose a new --out"
                )
            return
        config["versions"] = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        }
        config["model_name"] = getattr(self.loaded, "name", self.cfg.model)
        config["edited_modules"] = sorted(self.guard.original)
        write_json(path, config)

    def _reference(self) -> dict[str, Any]:
        """Generation entropy of the unedited model on the first cases' prompts."""
        path = self.out / "reference.json"
        if path.exists():
            return read_json_object(path, "reference generation check")
        self.guard.check_restored("before the run")
        prompts = [p for c in self.cases[:4] for p in generation_prompts(c, self.cfg.n_generations)]
        check = generation_check(
            self.model, self.loaded.tokenizer, prompts, self.cfg, self.cfg.seed
        )
        write_json(path, check)
        return check

    def _case_seed(self, index: int) -> int:
        return self.cfg.seed * 1_000_003 + index

    def _edit_and_score(
        self, case: Case, index: int, variant: str, single: bool = False
    ) -> tuple[dict[str, Any], Any]:
        """Pre-scores, the edit, post-scores and the generation check of one case.

        In single-edit mode the model is the unedited one for every variant, so the pre-edit
        scores and the variant-independent part of the edit (keys, v*) are computed once per
        case and reused by the other variants.
        """
        tokenizer, bs = self.loaded.tokenizer, self.cfg.batch_size
        timings: dict[str, float] = {}
        row: dict[str, Any] = {
            "case_id": case.case_id,
            "index": index,
            "variant": variant,
            "subject": case.subject,
            "target_new": case.target_new,
            "target_true": case.target_true,
        }
        with _timed(timings, "score_pre"):
            if single:
                row["pre"] = self._once(
                    self._pre_scores,
                    index,
                    variant,
                    lambda: score_case(self.model, tokenizer, case, bs),
                )
            else:
                row["pre"] = score_case(self.model, tokenizer, case, bs)
        row["metrics_pre"] = metrics_of(row["pre"])
        result = None
        with _timed(timings, "edit"):
            try:
                result = self._edit(case, index, variant, single)
            except ValueError as err:  # a refused edit leaves the model as it was
                row["error"] = f"{type(err).__name__}: {err}"
        row["diagnostics"] = result.as_record() if result is not None else None
        if result is not None:
            self.guard.require(result.module_name)
        with _timed(timings, "score_post"):
            row["post"] = score_case(self.model, tokenizer, case, bs)
        row["metrics_post"] = metrics_of(row["post"])
        with _timed(timings, "generate"):
            row["generation"] = generation_check(
                self.model,
                tokenizer,
                generation_prompts(case, self.cfg.n_generations),
                self.cfg,
                self._case_seed(index),
            )
        row["timings"] = timings
        return row, result

    def _edit(self, case: Case, index: int, variant: str, single: bool) -> Any:
        if not single:
            return self.editor.edit(case.request(), variant=variant)
        prepared = self._once(
            self._prepared, index, variant, lambda: self.editor.prepare(case.request())
        )
        return self.editor.apply(prepared, variant)

    def _once(
        self, cache: dict[int, Any], index: int, variant: str, compute: Callable[[], Any]
    ) -> Any:
        """A single-mode cache entry: computed by the first variant, reused by the others,
        dropped by the last so that a whole run's keys and v* are not kept."""
        value = cache[index] if index in cache else compute()
        if variant == self.cfg.variants[-1]:
            cache.pop(index, None)
        else:
            cache[index] = value
        return value

    def _flag(self, row: dict[str, Any], history: list[float]) -> None:
        delta = row["diagnostics"]["delta_norm"] if row["diagnostics"] else None
        reasons = collapse_reasons(
            delta,
            history,
            row["generation"]["ngram_entropy"],
            entropy_threshold(self.reference, self.cfg),
            self.cfg,
        )
        row["collapse"] = bool(reasons)
        row["collapse_reasons"] = reasons
        if delta is not None:
            history.append(float(delta))
        if reasons:
            tqdm.write(
                f"collapse at case {row['case_id']} ({row['variant']}): {'; '.join(reasons)}"
            )

    def _bar(self, start: int, desc: str) -> Iterable[int]:
        return tqdm(
            range(start, len(self.cases)),
            desc=desc,
            initial=start,
            total=len(self.cases),
            disable=not self.progress,
        )

    def single_row(self, variant: str, index: int) -> dict[str, Any]:
        """One case edited on the unedited model, restored bit-exactly afterwards (unflagged)."""
        row, _ = self._edit_and_score(self.cases[index], index, variant, single=True)
        self.editor.restore()
        self.guard.check_restored(f"single {variant}: after case {self.cases[index].case_id}")
        return row

    def forget_case(self, index: int) -> None:
        """Drop what the variants of case ``index`` shared (a worker ran only some of them)."""
        self._pre_scores.pop(index, None)
        self._prepared.pop(index, None)

    def run_single(self, variant: str, work: SingleWork | None = None) -> list[dict[str, Any]]:
        """Each case edited on the unedited model; ``work`` computes the rows (default: here)."""
        work = work if work is not None else self
        path = self.out / f"single-{variant}.jsonl"
        rows = _resume_rows(path, self.cases)
        history = [r["diagnostics"]["delta_norm"] for r in rows if r["diagnostics"]]
        self.guard.check_restored(f"single {variant}: before case {len(rows)}")
        for index in self._bar(len(rows), f"single {variant}"):
            if self.on_case is not None:
                self.on_case("single", variant, index)
            row = work.single_row(variant, index)
            self._flag(row, history)
            append_line(path, row)
            rows.append(row)
        return rows

    def glue_scores(self) -> dict[str, Any]:
        return evaluate_glue(
            self.model,
            self.loaded.tokenizer,
            data_dir=self.cfg.glue_data,
            n=self.cfg.glue_n,
            shots=self.cfg.glue_shots,
            seed=self.cfg.seed,
            batch_size=self.cfg.batch_size,
        )

    def _glue(self, work: StreamWork, variant: str, step: int, done: set[int]) -> None:
        if self.cfg.glue_every == 0 or step in done:
            return
        append_line(self.out / f"glue-{variant}.jsonl", {"step": step, "tasks": work.glue_scores()})
        done.add(step)

    def _glue_done(self, variant: str, n_done: int) -> set[int]:
        """The steps whose GLUE checks are on file, the file cut to its complete lines so
        that the next check is not appended to a torn one. A check after the checkpoint
        (written, then killed before the next checkpoint) is dropped: it is redone."""
        path = self.out / f"glue-{variant}.jsonl"
        rows = [r for r in read_lines(path) if int(r["step"]) <= n_done]
        if path.exists():
            rewrite_lines(path, rows)
        return {int(r["step"]) for r in rows}

    def _checkpoint(self, path: Path, n_done: int, weights: Mapping[str, torch.Tensor]) -> None:
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"n_done": n_done, "weights": dict(weights)}, tmp)
        os.replace(tmp, path)

    def begin_stream(self, variant: str, weights: Mapping[str, torch.Tensor]) -> None:
        """Start a sequential stream from the unedited model plus ``weights`` (a checkpoint)."""
        self.guard.check_restored(f"sequential {variant}: before the first edit")
        self.guard.load(weights)

    def stream_row(self, variant: str, index: int) -> dict[str, Any]:
        """The next edit of a sequential stream, on the model as the previous ones left it."""
        row, _ = self._edit_and_score(self.cases[index], index, variant)
        row["cumulative_norm"] = self.guard.distance()
        # Normalized like |Δ|, by the elements of one edited weight.
        row["cumulative_delta"] = row["cumulative_norm"] / self.guard.numel
        return row

    def edited_weights(self) -> dict[str, torch.Tensor]:
        return self.guard.current()

    def end_stream(self) -> None:
        self.editor.restore()
        self.guard.reset()  # a resumed run loaded weights the editor never saw

    def run_sequential(
        self, variant: str, work: StreamWork | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Edits accumulate; returns the per-edit rows and the final scores of every case."""
        work = work if work is not None else self
        path = self.out / f"sequential-{variant}.jsonl"
        state_path = self.out / f"sequential-{variant}.state.pt"
        n_done, weights = 0, {}
        if state_path.exists():
            state = torch.load(state_path, weights_only=True)
            n_done, weights = int(state["n_done"]), state["weights"]
        work.begin_stream(variant, weights)
        rows = _resume_rows(path, self.cases, keep=n_done)
        glue_done = self._glue_done(variant, n_done)
        every = self.cfg.glue_every
        if every and (n_done % every == 0 or n_done == len(self.cases)):
            self._glue(work, variant, n_done, glue_done)
        history = [r["diagnostics"]["delta_norm"] for r in rows if r["diagnostics"]]
        for index in self._bar(n_done, f"sequential {variant}"):
            if self.on_case is not None:
                self.on_case("sequential", variant, index)
            row = work.stream_row(variant, index)
            self._flag(row, history)
            append_line(path, row)
            rows.append(row)
            if (index + 1) % self.cfg.checkpoint_every == 0 or index + 1 == len(self.cases):
                self._checkpoint(state_path, index + 1, work.edited_weights())
            if every and ((index + 1) % every == 0 or index + 1 == len(self.cases)):
                self._glue(work, variant, index + 1, glue_done)
        final = self._final_scores(variant, work)
        work.end_stream()
        return rows, final

    def final_row(self, index: int) -> dict[str, Any]:
        """Case ``index`` scored on the model as the whole stream left it."""
        case = self.cases[index]
        scores = score_case(self.model, self.loaded.tokenizer, case, self.cfg.batch_size)
        return {
            "case_id": case.case_id,
            "index": index,
            "post": scores,
            "metrics_post": metrics_of(scores),
        }

    def _final_scores(self, variant: str, work: StreamWork) -> list[dict[str, Any]]:
        path = self.out / f"sequential-{variant}-final.jsonl"
        rows = _resume_rows(path, self.cases)
        for index in self._bar(len(rows), f"final {variant}"):
            row = work.final_row(index)
            append_line(path, row)
            rows.append(row)
        return rows

    def renew_editor(self) -> None:
        """A new editor for the next mode and variant (see ``fresh_editor``)."""
        if self.fresh_editor is not None:
            self.editor = self._wrap(self.fresh_editor())

    @contextmanager
    def session(self) -> Iterator[None]:
        """What every way of running the cases needs first: the folder locked against a
        second writer throughout, the config written (a resume checked against it) and the
        unedited model's reference scores."""
        with run_folder_lock(self.out):
            self._write_config()
            self.reference = self._reference()
            yield

    def run(self) -> dict[str, Any]:
        """Every mode and variant of the config, then ``summary.json``."""
        with self.session():
            return self._run_locked()

    def _run_locked(self) -> dict[str, Any]:
        start = time.perf_counter()
        for mode in self.cfg.modes:
            for variant in self.cfg.variants:
                self.renew_editor()
                if mode == "single":
                    self.run_single(variant)
                else:
                    self.run_sequential(variant)
        device = str(getattr(self.loaded, "device", "cpu"))
        return self.write_summary(
            {
                "workers": 1,
                "devices": [device],
                "wall_seconds": time.perf_counter() - start,
                **kernel_settings(),
            }
        )

    def write_summary(self, execution: Mapping[str, Any]) -> dict[str, Any]:
        """``summary.json`` from the case files, with how this invocation ran (workers,
        devices, wall time, retries), so that scaling can be read off runs."""
        summary = summarize(
            self.out,
            self.cfg,
            getattr(self.loaded, "name", self.cfg.model),
            [c.case_id for c in self.cases],
        )
        summary["execution"] = dict(execution)
        write_json(self.out / "summary.json", summary)
        return summary


# ---------------------------------------------------------------- summary


def _distribution(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    return {
        "min": float(array.min()),
        "median": float(np.median(array)),
        "p90": float(np.quantile(array, 0.9)),
        "max": float(array.max()),
    }


# What an edit must achieve; a case whose edit failed scores 0 on these, whatever the
# unedited model happened to score (it must never count as a success).
EDIT_METRICS = ("ES", "EM", "PS", "PM")


def _post_metrics(
    rows: Sequence[Mapping[str, Any]], failed: set[Any]
) -> Iterator[Mapping[str, float]]:
    for row in rows:
        metrics = dict(row["metrics_post"])
        if row["case_id"] in failed:
            metrics.update(dict.fromkeys(EDIT_METRICS, 0.0))
        yield metrics


def _failed_cases(rows: Sequence[Mapping[str, Any]]) -> set[Any]:
    return {r["case_id"] for r in rows if "error" in r}


def _variant_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    deltas = [r["diagnostics"]["delta_norm"] for r in rows if r.get("diagnostics")]
    failed = _failed_cases(rows)
    out: dict[str, Any] = ref.aggregate(_post_metrics(rows, failed))
    out["pre"] = ref.aggregate(r["metrics_pre"] for r in rows)
    out.update(
        {
            "n": len(rows),
            "failed": len(failed),
            "collapses": sum(bool(r.get("collapse")) for r in rows),
            "collapse_cases": [r["case_id"] for r in rows if r.get("collapse")],
            "delta_norm": _distribution(deltas),
            "generation_entropy": float(np.mean([r["generation"]["ngram_entropy"] for r in rows])),
            "unigram_entropy": float(np.mean([r["generation"]["unigram_entropy"] for r in rows])),
            "edit_seconds_mean": float(np.mean([r["timings"]["edit"] for r in rows])),
        }
    )
    return out


def summarize(
    out: Path, cfg: RunConfig, model_name: str, case_ids: Sequence[str | int]
) -> dict[str, Any]:
    """``summary.json`` from the case files; sequential metrics are those after the last
    edit (the paper's Table 2), the scores right after each edit are under ``immediate``."""
    results: dict[str, dict[str, Any]] = {mode: {} for mode in cfg.modes}
    for mode in cfg.modes:
        for variant in cfg.variants:
            rows = read_lines(out / f"{mode}-{variant}.jsonl")
            if len(rows) != len(case_ids):
                raise RuntimeError(
                    f"{mode}-{variant}.jsonl holds {len(rows)} of "
                    f"{len(case_ids)} cases; rerun to finish it"
                )
            summary = _variant_summary(rows)
            if mode == "sequential":
                final = read_lines(out / f"sequential-{variant}-final.jsonl")
                immediate = {m: summary.pop(m) for m in ref.TABLE_METRICS}
                summary.update(ref.aggregate(_post_metrics(final, _failed_cases(rows))))
                summary["immediate"] = immediate
                summary["first_collapse"] = next(
                    (r["index"] + 1 for r in rows if r.get("collapse")), None
                )
                summary["cumulative_norm"] = [r["cumulative_norm"] for r in rows]
                summary["glue"] = read_lines(out / f"glue-{variant}.jsonl")
            results[mode][variant] = summary
    return {
        "model": model_name,
        "data": cfg.data,
        "n_cases": len(case_ids),
        "degrade": cfg.degrade,
        "results": results,
    }
