"""CounterFact (original and reduced schema) and zsRE loaders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rome_fast.eval.data import cases_from_records, load_cases
from rome_fast.infra.datadir import default_data_dir


def data_file(relative: str) -> Path:
    return default_data_dir() / relative


def test_original_schema_on_real_records() -> None:
    cases = load_cases(data_file("counterfact/counterfact-rome-schema-sample.json"))
    assert len(cases) == 5
    first = cases[0]
    assert (first.case_id, first.prompt, first.subject) == (
        0,
        "The mother tongue of {} is",
        "Danielle Darrieux",
    )
    assert (first.target_new, first.target_true, first.neighborhood_target) == (
        "English",
        "French",
        "French",
    )
    assert len(first.paraphrase_prompts) == 2
    assert len(first.neighborhood_prompts) == 10
    assert len(first.generation_prompts) == 10
    assert first.rewrite_prompt == "The mother tongue of Danielle Darrieux is"


@pytest.mark.parametrize("split", ["train", "val", "edit"])
def test_reduced_schema_on_the_shared_splits(split: str) -> None:
    path = data_file(f"counterfact/counterfact-{split}.json")
    cases = load_cases(path)
    records = json.loads(path.read_text())
    assert len(cases) == len(records)
    for case, record in zip(cases, records, strict=True):
        assert case.rewrite_prompt == record["prompt"]
        assert case.paraphrase_prompts == (record["rephrase_prompt"],)
        assert case.neighborhood_target == record["locality_ground_truth"]


def test_zsre_mend_schema() -> None:
    cases = load_cases(data_file("zsre/zsre_mend_train-1k.json"), limit=3)
    first = cases[0]
    assert first.rewrite_prompt == "What is the product made by UniFirst?"
    assert (first.target_new, first.target_true) == ("unmanned aircraft", "uniform")
    assert first.neighborhood_target == "Walter Sobchak"
    assert first.schema == "zsre"


def test_limit_and_offset() -> None:
    path = data_file("counterfact/counterfact-val.json")
    records = json.loads(path.read_text())
    cases = load_cases(path, limit=2, offset=3)
    assert [c.case_id for c in cases] == [r["case_id"] for r in records[3:5]]


def original_record(**rewrite: Any) -> dict[str, Any]:
    base = {
        "prompt": "{} is in",
        "subject": "Paris",
        "target_new": {"str": "Rome"},
        "target_true": {"str": "France"},
    }
    return {
        "case_id": 7,
        "requested_rewrite": {**base, **rewrite},
        "paraphrase_prompts": ["Paris lies in"],
        "neighborhood_prompts": ["Lyon is in"],
        "attribute_prompts": [],
        "generation_prompts": [],
    }


def test_malformed_record_names_file_record_and_field(tmp_path: Path) -> None:
    good, bad = original_record(), original_record(target_new="Rome")
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([good, bad]))
    with pytest.raises(
        ValueError,
        match=r"cf\.json: field 'requested_rewrite\.target_new' of "
        r"record 1 \(case_id 7\)",
    ):
        load_cases(path)


def test_missing_field_is_named(tmp_path: Path) -> None:
    record = original_record()
    del record["paraphrase_prompts"]
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([record]))
    with pytest.raises(ValueError, match=r"field 'paraphrase_prompts' of record 0 .* is missing"):
        load_cases(path)


def test_reduced_prompt_without_subject_is_rejected() -> None:
    record = {
        "case_id": 1,
        "prompt": "It is in",
        "subject": "Paris",
        "target_new": "Rome",
        "ground_truth": "France",
        "rephrase_prompt": "Paris is in",
        "locality_prompt": "Lyon is in",
        "locality_ground_truth": "France",
    }
    with pytest.raises(
        ValueError, match=r"field 'prompt' of record 0 .* does not contain the subject 'Paris'"
    ):
        cases_from_records([record])


def test_unknown_schema_is_rejected_with_what_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match="matches no known schema"):
        load_cases(path)


def test_json_lines_are_read(tmp_path: Path) -> None:
    path = tmp_path / "cf.jsonl"
    path.write_text("\n".join(json.dumps({**original_record(), "case_id": i}) for i in range(3)))
    assert [c.case_id for c in load_cases(path)] == [0, 1, 2]


def test_limit_beyond_the_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([original_record()]))
    with pytest.raises(ValueError, match="only 1 records exist"):
        load_cases(path, limit=5)


def test_data_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cf.json").write_text(json.dumps([original_record()]))
    monkeypatch.setenv("ROME_DATA_DIR", str(tmp_path))
    assert load_cases("cf.json")[0].case_id == 7


@pytest.fixture
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's setup: no ROME_DATA_DIR, an empty user cache folder (returned)."""
    monkeypatch.delenv("ROME_DATA_DIR")
    monkeypatch.setenv("ROME_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_without_rome_data_dir_data_is_read_from_the_user_cache(user_cache: Path) -> None:
    (user_cache / "data").mkdir()
    (user_cache / "data" / "cf.json").write_text(json.dumps([original_record()]))
    assert load_cases("cf.json")[0].case_id == 7


def test_missing_data_says_where_it_looked_and_how_to_get_it(user_cache: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        load_cases("counterfact/counterfact.json")
    message = str(error.value)
    assert f"looked at counterfact/counterfact.json and {user_cache}/data/counterfact/" in message
    assert "ROME_DATA_DIR unset" in message
    assert "rome data fetch counterfact" in message
