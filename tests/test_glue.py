"""Few-shot GLUE prompts, answer parsing and scoring."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from rome_fast.eval.glue import TASKS, UNPARSED, build_prompts, evaluate_task, load_task

RECORDS = [{"sentence": f"sentence {i}", "label": i % 2, "idx": i} for i in range(10)]


def test_parse_maps_answers_to_glue_labels() -> None:
    assert TASKS["sst2"].parse(" Positive.\n") == 1
    assert TASKS["sst2"].parse(" negative") == 0
    assert TASKS["rte"].parse(" yes") == 0  # RTE: 0 = entailment
    assert TASKS["mrpc"].parse(" yes") == 1
    assert TASKS["cola"].parse(" maybe") == UNPARSED
    assert TASKS["cola"].parse("") == UNPARSED


def test_prompts_hold_balanced_shots_that_are_not_evaluated() -> None:
    prompts, gold = build_prompts(TASKS["sst2"], RECORDS, n=8, shots=2, seed=0)
    assert len(prompts) == len(gold) == 8
    header = prompts[0].split("\n\n")[:2]
    assert {h.rsplit(" ", 1)[-1] for h in header} == {"positive", "negative"}
    shown = {line for p in prompts for line in p.split("\n\n")[-1].splitlines()}
    assert not any(h.splitlines()[0] in shown for h in header)


def test_asking_for_too_many_examples_is_an_error() -> None:
    with pytest.raises(ValueError, match="only 8 remain"):
        build_prompts(TASKS["sst2"], RECORDS, n=9, shots=2, seed=0)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_shared_task_files_load(task: str) -> None:
    records = load_task(task)
    assert {r["label"] for r in records} == {0, 1}


def test_scores_follow_the_parsed_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    from rome_fast.eval import glue

    prompts, gold = build_prompts(TASKS["sst2"], RECORDS, n=6, shots=2, seed=0)
    words = {1: " positive", 0: " negative"}
    # The model answers right on all but the last example, which it does not answer at all.
    answers = dict(zip(prompts, [words[g] for g in gold[:-1]] + [" hmm"], strict=True))

    def fake_generate(_model: Any, _tokenizer: Any, batch: list[str], **_: Any) -> Any:
        return SimpleNamespace(texts=[answers[p] for p in batch])

    monkeypatch.setattr(glue, "generate", fake_generate)
    scores = evaluate_task(None, None, "sst2", RECORDS, n=6, shots=2, batch_size=4)  # type: ignore[arg-type]
    assert scores["accuracy"] == pytest.approx(5 / 6)
    assert scores["unparsed"] == 1
    assert scores["n"] == 6
    tp = sum(g == 1 for g in gold[:-1])
    fn = 1 if gold[-1] == 1 else 0
    assert scores["f1"] == pytest.approx(2 * tp / (2 * tp + fn))
