"""The paper's own CounterFact evaluator, imported from ``../shared/anchors/rebuilding-rome``
(``$ROME_ANCHORS_DIR/rebuilding-rome`` when set), never copied.

What it needs and this suite does not install is stubbed from outside, for the import only:
``nltk`` and ``sklearn`` (used by the generation metrics, which the agreement check does not
call: their n-gram tokenizer needs a model download) and ``dsets`` (the snippets dataset). Its
``util.globals`` reads ``globals.yml`` from the working directory, so the import runs there.
Its ``.to("cuda")`` goes to the model's device through :class:`OnDevice`.

Records go in and out in the public format: ``requested_rewrite`` plus prompt lists in,
``{rewrite,paraphrase,neighborhood}_prompts_probs`` (per-prompt mean NLLs) out.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import os
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import BatchEncoding

from rome_fast.eval.data import EvalCase
from tests.anchors import checkout

REPO = Path(__file__).resolve().parents[1]
STUBBED = {
    "nltk": {},
    "sklearn": {},
    "sklearn.feature_extraction": {},
    "sklearn.feature_extraction.text": {"TfidfVectorizer": object},
    "dsets": {"AttributeSnippets": object},
}
# The public metrics' names in summarize.py's output -> ours.
SUMMARY_KEYS = {
    "post_rewrite_success": "ES",
    "post_rewrite_diff": "EM",
    "post_paraphrase_success": "PS",
    "post_paraphrase_diff": "PM",
    "post_neighborhood_success": "NS",
    "post_neighborhood_diff": "NM",
    "post_score": "S",
}


@dataclass(frozen=True)
class PublicEvaluator:
    counterfact: types.ModuleType  # experiments/py/eval_utils_counterfact.py
    summarize: types.ModuleType  # experiments/summarize.py


@contextlib.contextmanager
def _import_context(root: Path) -> Iterator[None]:
    """The anchor on sys.path, stubs for its unused imports, its folder as the working
    directory; all undone on exit, the modules it imported included."""
    before = set(sys.modules)
    stubs = [name for name in STUBBED if importlib.util.find_spec(name.split(".")[0]) is None]
    for name in stubs:
        module = types.ModuleType(name)
        module.__dict__.update(STUBBED[name])
        sys.modules[name] = module
    sys.path.insert(0, str(root))
    cwd = Path.cwd()
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.path.remove(str(root))
        # Its own modules (`util`, ...) and the stubs leave; what they imported from the
        # environment stays, and the loaded modules keep their references.
        for name in set(sys.modules) - before:
            file = getattr(sys.modules[name], "__file__", None)
            if name in stubs or (file is not None and Path(file).is_relative_to(root)):
                del sys.modules[name]


def _load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def public_evaluator() -> PublicEvaluator:
    root = checkout("rebuilding-rome")
    with _import_context(root):
        return PublicEvaluator(
            counterfact=_load(root / "experiments/py/eval_utils_counterfact.py", "public_cf_eval"),
            summarize=_load(root / "experiments/summarize.py", "public_summarize"),
        )


class OnDevice:
    """A tokenizer whose batches' ``.to(anything)`` go to ``device`` (the public code
    hard-codes "cuda"). A missing pad token is the EOS token, as the public experiments set."""

    def __init__(self, tokenizer: Any, device: torch.device, padding_side: str = "right") -> None:
        self.tokenizer = copy.deepcopy(tokenizer)  # a shallow copy shares the backend's settings
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = padding_side
        self.device = device

    def __call__(self, *args: Any, **kwargs: Any) -> BatchEncoding:
        batch = self.tokenizer(*args, **kwargs)
        batch.to = lambda _device: BatchEncoding.to(batch, self.device)
        return cast(BatchEncoding, batch)


def public_record(case: EvalCase) -> dict[str, Any]:
    """``case`` in the original CounterFact schema the public evaluator reads."""
    return {
        "case_id": case.case_id,
        "requested_rewrite": {
            "prompt": case.prompt,
            "subject": case.subject,
            "target_new": {"str": case.target_new},
            "target_true": {"str": case.target_true},
        },
        "paraphrase_prompts": list(case.paraphrase_prompts),
        "neighborhood_prompts": list(case.neighborhood_prompts),
        "attribute_prompts": list(case.attribute_prompts),
        "generation_prompts": list(case.generation_prompts),
    }


def public_scores(
    evaluator: PublicEvaluator, model: torch.nn.Module, tok: OnDevice, case: EvalCase
) -> dict[str, dict[str, list[float]]]:
    """Per-prompt NLLs by ``compute_rewrite_quality_counterfact``, in our score layout."""
    with torch.no_grad():
        out = evaluator.counterfact.compute_rewrite_quality_counterfact(
            model, tok, public_record(case), None, None
        )
    return {
        group: {
            "nll_new": [p["target_new"] for p in out[f"{group}_prompts_probs"]],
            "nll_true": [p["target_true"] for p in out[f"{group}_prompts_probs"]],
        }
        for group in ("rewrite", "paraphrase", "neighborhood")
    }


def public_summary(
    evaluator: PublicEvaluator, folder: Path, post: Sequence[Mapping[str, Any]]
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """``summarize.py`` over case files holding ``post`` (our score layout), one per record:
    its per-record metrics (fractions) and its table (×100, rounded to 2 decimals, and S)."""
    # It orders case files by the first number in their whole path: keep the only digits in
    # the file names, and give it a relative path from ``folder``.
    run = folder / "results" / "run"
    run.mkdir(parents=True)
    for case_id, scores in enumerate(post):
        probs = {
            f"{group}_prompts_probs": [
                {"target_new": n, "target_true": t}
                for n, t in zip(pair["nll_new"], pair["nll_true"], strict=True)
            ]
            for group, pair in scores.items()
        }
        data = {"case_id": case_id, "post": probs}
        (run / f"case_{case_id}.json").write_text(json.dumps(data))
    with contextlib.chdir(folder), contextlib.redirect_stdout(io.StringIO()):  # it pprints
        per_record = evaluator.summarize.summarize(Path("results"), abs_path=True)
    stats = json.loads((run / "evals" / "summary.json").read_text())
    records = [
        {ours: float(per_record[public][i]) for public, ours in SUMMARY_KEYS.items() if ours != "S"}
        for i in range(len(post))
    ]
    return records, {ours: float(stats[public][0]) for public, ours in SUMMARY_KEYS.items()}
