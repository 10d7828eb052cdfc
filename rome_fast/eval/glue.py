"""Downstream few-shot checks on SST-2, MRPC, CoLA and RTE (Gupta et al. 2024a's protocol).

Each example becomes a few-shot prompt (``shots`` solved examples drawn with a fixed seed
from the same file and excluded from the evaluated ones), the model decodes a few tokens
greedily, the first word is parsed into a label, and accuracy, F1 (of label 1) and MCC
are computed. An answer that parses to no label counts as wrong and is reported.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from rome_fast.eval.score import generate
from rome_fast.infra.datadir import DATA_ENV, default_data_dir
from rome_fast.model.context import check_fits
from rome_ref.metrics import accuracy, f1_score, matthews_corrcoef

UNPARSED = -1


@dataclass(frozen=True)
class Task:
    name: str
    fields: tuple[str, ...]  # the record fields shown, in order
    question: str
    answers: Mapping[int, str]  # label -> the answer word (GLUE label convention)

    def render(self, record: Mapping[str, Any], answer: str = "") -> str:
        lines = [f"{f.capitalize()}: {str(record[f]).strip()}" for f in self.fields]
        return "\n".join([*lines, f"{self.question} {answer}".rstrip()])

    def parse(self, text: str) -> int:
        word = text.strip().split()[0].strip(".,:;!?\"'").lower() if text.strip() else ""
        for label, answer in self.answers.items():
            if word == answer:
                return label
        return UNPARSED


TASKS: dict[str, Task] = {
    "sst2": Task(
        "sst2", ("sentence",), "Sentiment (positive or negative):", {1: "positive", 0: "negative"}
    ),
    "mrpc": Task(
        "mrpc",
        ("sentence1", "sentence2"),
        "Do both sentences mean the same thing (yes or no)? Answer:",
        {1: "yes", 0: "no"},
    ),
    "cola": Task(
        "cola",
        ("sentence",),
        "Is this sentence grammatically acceptable (yes or no)? Answer:",
        {1: "yes", 0: "no"},
    ),
    "rte": Task(
        "rte",
        ("sentence1", "sentence2"),
        "Does the first sentence entail the second (yes or no)? Answer:",
        {0: "yes", 1: "no"},
    ),
}


def task_file(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<data_dir>/<name>.jsonl`` or ``<data_dir>/glue/<name>.jsonl`` (default: the data
    folder's ``glue/``)."""
    if name not in TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; known: {', '.join(TASKS)}")
    base = Path(data_dir) if data_dir is not None else default_data_dir() / "glue"
    path = next(
        (p for p in (base / f"{name}.jsonl", base / "glue" / f"{name}.jsonl") if p.is_file()), None
    )
    if path is None:
        raise FileNotFoundError(
            f"{name}.jsonl not found in {base}; pass --glue-data DIR, or set {DATA_ENV} to a "
            f"folder holding glue/{name}.jsonl"
        )
    return path


def load_task(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Records of the task's file (:func:`task_file`), each checked for the task's fields."""
    path = task_file(name, data_dir)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        for field in (*TASKS[name].fields, "label"):
            if field not in record:
                raise ValueError(f"{path}: line {number} lacks the field {field!r}")
        if record["label"] not in TASKS[name].answers:
            raise ValueError(
                f"{path}: line {number} has label {record['label']!r}, expected 0 or 1"
            )
        records.append(record)
    return records


def build_prompts(
    task: Task, records: Sequence[Mapping[str, Any]], *, n: int, shots: int, seed: int
) -> tuple[list[str], list[int]]:
    """Few-shot prompts and gold labels for ``n`` records (shots drawn first, balanced)."""
    rng = random.Random(seed)
    order = list(range(len(records)))
    rng.shuffle(order)
    demos: list[int] = []
    labels = sorted(task.answers)
    for shot in range(shots):  # alternate labels so that no answer is favoured
        label = labels[shot % len(labels)]
        pick = next((i for i in order if i not in demos and records[i]["label"] == label), None)
        if pick is None:
            raise ValueError(f"{task.name}: no example left with label {label} for shot {shot}")
        demos.append(pick)
    rest = [i for i in order if i not in demos]
    if n > len(rest):
        raise ValueError(f"{task.name}: asked for {n} examples but only {len(rest)} remain")
    header = "\n\n".join(task.render(records[i], task.answers[records[i]["label"]]) for i in demos)
    prompts = [(header + "\n\n" if header else "") + task.render(records[i]) for i in rest[:n]]
    return prompts, [int(records[i]["label"]) for i in rest[:n]]


ANSWER_TOKENS = 3  # greedy tokens generated per answer


def check_fits_context(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, task: str, prompts: Sequence[str]
) -> None:
    """Every prompt plus its answer within the model's context."""
    for prompt in prompts:
        check_fits(
            model,
            len(tokenizer(prompt)["input_ids"]) + ANSWER_TOKENS,
            f"a {task} GLUE prompt (lower --glue-shots)",
        )


def evaluate_task(  # noqa: PLR0913  keyword-only: the few-shot settings a run records
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    records: Sequence[Mapping[str, Any]],
    *,
    n: int = 50,
    shots: int = 2,
    seed: int = 0,
    batch_size: int = 8,
    max_new_tokens: int = ANSWER_TOKENS,
) -> dict[str, float]:
    """Accuracy, F1 and MCC of greedy few-shot answers; ``unparsed`` counts non-answers."""
    task = TASKS[name]
    prompts, gold = build_prompts(task, records, n=n, shots=shots, seed=seed)
    predicted: list[int] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        out = generate(model, tokenizer, batch, max_new_tokens=max_new_tokens, top_k=None)
        predicted.extend(task.parse(text) for text in out.texts)
    return {
        "accuracy": accuracy(gold, predicted),
        "f1": f1_score(gold, predicted, positive=1),
        "mcc": matthews_corrcoef(gold, predicted, positive=1),
        "n": float(len(gold)),
        "unparsed": float(sum(p == UNPARSED for p in predicted)),
    }


def evaluate_glue(  # noqa: PLR0913  keyword-only: the few-shot settings a run records
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    *,
    tasks: Sequence[str] = tuple(TASKS),
    data_dir: str | os.PathLike[str] | None = None,
    n: int = 50,
    shots: int = 2,
    seed: int = 0,
    batch_size: int = 8,
    check_only: bool = False,
) -> dict[str, dict[str, float]]:
    """:func:`evaluate_task` for every task, keyed by task name. ``check_only``: evaluate
    nothing, only check what the evaluation will read (the files, enough examples, every
    prompt within the model's context), so that a run can refuse before it starts."""
    if check_only:
        for name in tasks:
            prompts, _ = build_prompts(
                TASKS[name], load_task(name, data_dir), n=n, shots=shots, seed=seed
            )
            check_fits_context(model, tokenizer, name, prompts)
        return {}
    return {
        name: evaluate_task(
            model,
            tokenizer,
            name,
            load_task(name, data_dir),
            n=n,
            shots=shots,
            seed=seed,
            batch_size=batch_size,
        )
        for name in tasks
    }
