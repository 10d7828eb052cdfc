"""CounterFact and zsRE loaders, normalized to one :class:`EvalCase`.

Accepted files (a JSON list of records, or JSON lines):

* CounterFact, original schema: ``requested_rewrite{prompt with "{}", subject,
  target_new{str}, target_true{str}}``, ``paraphrase_prompts``, ``neighborhood_prompts``,
  ``attribute_prompts``, ``generation_prompts``;
* CounterFact, reduced schema: ``prompt`` (subject filled in), ``subject``, ``target_new``,
  ``ground_truth``, ``rephrase_prompt``, ``locality_prompt``, ``locality_ground_truth``;
* zsRE, MEND schema: ``subject``, ``src``, ``alt`` (the new answer), ``answers``,
  ``rephrase``, ``loc``, ``loc_ans``.

The schema is read from the first record and every record is checked against it; a
malformed record raises a ValueError naming the file, the record and the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rome_fast.infra.datadir import HOW_TO_GET, default_data_dir, describe_data_dir

if TYPE_CHECKING:
    from rome_fast.edit.request import EditRequest

SCHEMAS = ("counterfact", "counterfact-reduced", "zsre")


@dataclass(frozen=True)
class EvalCase:
    """One edit with everything needed to score it, whatever file it came from."""

    case_id: str | int
    prompt: str  # holds "{}" where the subject goes
    subject: str
    target_new: str
    target_true: str
    paraphrase_prompts: tuple[str, ...]
    neighborhood_prompts: tuple[str, ...]
    neighborhood_target: str  # the true answer of the neighborhood prompts
    attribute_prompts: tuple[str, ...] = ()
    generation_prompts: tuple[str, ...] = ()
    schema: str = "counterfact"

    @property
    def rewrite_prompt(self) -> str:
        return self.prompt.replace("{}", self.subject)

    def request(self) -> EditRequest:
        from rome_fast.edit.request import EditRequest  # imports torch and transformers: on demand

        return EditRequest(
            prompt=self.prompt,
            subject=self.subject,
            target_new=self.target_new,
            target_true=self.target_true,
            case_id=self.case_id,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Record:
    """Field access that names the file, the record and the field on any error."""

    def __init__(self, data: Any, path: Path, index: int) -> None:
        self.path, self.index = path, index
        if not isinstance(data, Mapping):
            raise self.error("", f"is a {type(data).__name__}, expected a JSON object")
        self.data = data
        self.label = f"record {index}" + (
            f" (case_id {data['case_id']!r})" if "case_id" in data else ""
        )

    def error(self, field: str, problem: str) -> ValueError:
        label = getattr(self, "label", f"record {self.index}")
        where = f"field {field!r} of " if field else ""
        return ValueError(f"{self.path}: {where}{label} {problem}")

    def get(self, field: str, parent: Mapping[str, Any] | None = None) -> Any:
        source = self.data if parent is None else parent
        if field not in source:
            raise self.error(field, "is missing")
        return source[field]

    def text(self, field: str, parent: Mapping[str, Any] | None = None) -> str:
        value = self.get(field, parent)
        if not isinstance(value, str) or not value.strip():
            raise self.error(field, f"must be a non-empty string, got {value!r}")
        return value

    def texts(self, field: str, *, allow_empty: bool = False) -> tuple[str, ...]:
        value = self.get(field)
        if not isinstance(value, list) or (not value and not allow_empty):
            raise self.error(field, f"must be a non-empty list of strings, got {value!r}")
        out = []
        for i, item in enumerate(value):
            # Some CounterFact derivatives store neighborhood prompts as {"prompt": ...}.
            text = item.get("prompt") if isinstance(item, Mapping) else item
            if not isinstance(text, str) or not text.strip():
                raise self.error(f"{field}[{i}]", f"must be a non-empty string, got {item!r}")
            out.append(text)
        return tuple(out)

    def template(self, text: str, subject: str, field: str) -> str:
        """``text`` with the subject's first occurrence replaced by ``{}``."""
        if "{" in text or "}" in text:
            raise self.error(field, f"contains a brace, which would break the template: {text!r}")
        if subject not in text:
            raise self.error(field, f"does not contain the subject {subject!r}: {text!r}")
        return text.replace(subject, "{}", 1)


def _original(rec: _Record) -> EvalCase:
    rewrite = rec.get("requested_rewrite")
    if not isinstance(rewrite, Mapping):
        raise rec.error("requested_rewrite", f"must be an object, got {rewrite!r}")
    prompt = rec.text("prompt", rewrite)
    if prompt.count("{}") != 1:
        raise rec.error("requested_rewrite.prompt", f"must contain '{{}}' exactly once: {prompt!r}")
    subject = rec.text("subject", rewrite)
    targets = []
    for name in ("target_new", "target_true"):
        target = rec.get(name, rewrite)
        if not isinstance(target, Mapping):
            raise rec.error(
                f"requested_rewrite.{name}", f"must be an object {{str, id}}, got {target!r}"
            )
        targets.append(rec.text("str", target))
    return EvalCase(
        case_id=rec.get("case_id"),
        prompt=prompt,
        subject=subject,
        target_new=targets[0],
        target_true=targets[1],
        paraphrase_prompts=rec.texts("paraphrase_prompts"),
        neighborhood_prompts=rec.texts("neighborhood_prompts"),
        neighborhood_target=targets[1],
        attribute_prompts=rec.texts("attribute_prompts", allow_empty=True),
        generation_prompts=rec.texts("generation_prompts", allow_empty=True),
        schema="counterfact",
    )


def _reduced(rec: _Record) -> EvalCase:
    subject = rec.text("subject")
    return EvalCase(
        case_id=rec.get("case_id"),
        prompt=rec.template(rec.text("prompt"), subject, "prompt"),
        subject=subject,
        target_new=rec.text("target_new"),
        target_true=rec.text("ground_truth"),
        paraphrase_prompts=(rec.text("rephrase_prompt"),),
        neighborhood_prompts=(rec.text("locality_prompt"),),
        neighborhood_target=rec.text("locality_ground_truth"),
        schema="counterfact-reduced",
    )


def _zsre(rec: _Record) -> EvalCase:
    subject = rec.text("subject")
    answers = rec.get("answers")
    if not isinstance(answers, list) or not answers or not isinstance(answers[0], str):
        raise rec.error("answers", f"must be a non-empty list of strings, got {answers!r}")
    return EvalCase(
        case_id=rec.index,  # zsRE records carry no id: their position in the file
        prompt=rec.template(rec.text("src"), subject, "src"),
        subject=subject,
        target_new=rec.text("alt"),
        target_true=answers[0],
        paraphrase_prompts=(rec.text("rephrase"),),
        neighborhood_prompts=(rec.text("loc"),),
        neighborhood_target=rec.text("loc_ans"),
        schema="zsre",
    )


_PARSERS: dict[str, Callable[[_Record], EvalCase]] = {
    "counterfact": _original,
    "counterfact-reduced": _reduced,
    "zsre": _zsre,
}


def detect_schema(record: Any, path: Path) -> str:
    """Which of :data:`SCHEMAS` a record follows, or a ValueError saying what is accepted."""
    keys = set(record) if isinstance(record, Mapping) else set()
    if "requested_rewrite" in keys:
        return "counterfact"
    if {"prompt", "rephrase_prompt", "locality_prompt"} <= keys:
        return "counterfact-reduced"
    if {"src", "alt", "loc"} <= keys:
        return "zsre"
    raise ValueError(
        f"{path}: record 0 matches no known schema (keys: {sorted(keys)}). Expected CounterFact "
        "with 'requested_rewrite', reduced CounterFact with 'prompt'/'rephrase_prompt'/"
        "'locality_prompt', or zsRE (MEND) with 'src'/'alt'/'loc'."
    )


def _read_records(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping):  # JSON lines holding a single record
        return [data]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg})") from err
    return records


def resolve_data_path(spec: str | os.PathLike[str]) -> Path:
    """An existing path as given, else the same path under :func:`default_data_dir`."""
    path = Path(spec)
    if path.is_file():
        return path
    candidate = default_data_dir() / path
    if not path.is_absolute() and candidate.is_file():
        return candidate
    looked = str(path) if path.is_absolute() else f"{path} and {candidate}"
    raise FileNotFoundError(
        f"data file {str(spec)!r} not found: looked at {looked} (data folder "
        f"{describe_data_dir()}); pass --data with an existing file, or {HOW_TO_GET}"
    )


def load_cases(
    path: str | os.PathLike[str], *, limit: int | None = None, offset: int = 0
) -> list[EvalCase]:
    """Cases ``offset .. offset+limit`` of a CounterFact (either schema) or zsRE file."""
    file = resolve_data_path(path)
    records = _read_records(file)
    if not records:
        raise ValueError(f"{file}: holds no records")
    parse = _PARSERS[detect_schema(records[0], file)]
    stop = len(records) if limit is None else offset + limit
    cases = [parse(_Record(records[i], file, i)) for i in range(offset, min(stop, len(records)))]
    if limit is not None and len(cases) < limit:
        raise ValueError(
            f"{file}: asked for {limit} cases from offset {offset} but only {len(records)} "
            "records exist; lower --limit/--offset"
        )
    seen: set[str | int] = set()
    for i, case in enumerate(cases, start=offset):
        if case.case_id in seen:
            raise ValueError(f"{file}: record {i} repeats case_id {case.case_id!r}")
        seen.add(case.case_id)
    return cases


def cases_from_records(records: Sequence[Any], source: str = "<records>") -> list[EvalCase]:
    """Parse in-memory records (the schema read from the first one)."""
    path = Path(source)
    parse = _PARSERS[detect_schema(records[0] if records else None, path)]
    return [parse(_Record(r, path, i)) for i, r in enumerate(records)]
