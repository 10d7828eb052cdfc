"""``rome edit --method memit|emmet|alphaedit --requests FILE.json``: many facts in one edit.

The facts are a JSON list of objects with ``EditRequest``'s fields. One line per fact is
printed (the new target's probability before and after, the residuals at k_prompt and k*);
``--json`` writes each fact's record (a single edit's field names, with the probabilities)
and the batch's own (method, keys, per-layer |Δ| and conditioning, seconds). The model is
left as it was, as for one fact.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from rome_fast.cli.options import build_editor
from rome_fast.cli.outputs import write_json_output
from rome_fast.cli.validate import check_out_file
from rome_fast.edit.batch_keys import check_key_choice
from rome_fast.edit.editor import Editor
from rome_fast.edit.request import EditRequest
from rome_fast.eval.score import mean_token_nll
from rome_fast.hparams.batched import check_method

REQUEST_FIELDS = tuple(f.name for f in dataclasses.fields(EditRequest))
REQUIRED_FIELDS = ("prompt", "subject", "target_new")
ONE_FACT_OPTIONS = ("prompt", "subject", "target_new", "target_true")
# One fact's edit: the rank-one variant and the continuations printed after it.
SINGLE_EDIT_OPTIONS = ("variant", "generation_tokens")


def check_batch_options(args: argparse.Namespace) -> None:
    """``--method`` with ``--requests`` and without one fact's options; ``--requests`` and
    ``--keys`` only with ``--method``; ``--impl fast``."""
    if args.method is None:
        if args.requests is not None or args.keys is not None:
            raise ValueError(
                "--requests and --keys edit many facts: add --method memit|emmet|alphaedit"
            )
        missing = [
            f"--{name.replace('_', '-')}" for name in REQUIRED_FIELDS if getattr(args, name) is None
        ]
        if missing:
            raise ValueError(
                f"{', '.join(missing)} is required to edit one fact (or give --method and "
                "--requests FILE.json for many)"
            )
        return
    check_method(args.method)
    if args.keys is not None:
        check_key_choice(args.keys)
    given = [
        f"--{name.replace('_', '-')}"
        for name in ONE_FACT_OPTIONS
        if getattr(args, name) is not None
    ]
    if given:
        raise ValueError(
            f"{', '.join(given)} describe one fact; with --method put every fact in "
            "--requests FILE.json"
        )
    single = [f"--{name.replace('_', '-')}" for name in SINGLE_EDIT_OPTIONS if getattr(args, name)]
    if single:
        raise ValueError(
            f"{', '.join(single)} apply to one fact's edit; --method edits with the method's "
            "own update and generates nothing: drop them"
        )
    if args.requests is None:
        raise ValueError("--method needs --requests FILE.json: a JSON list of requests")
    if args.impl != "fast":
        raise ValueError("--impl naive has no batched editor; drop --impl with --method")


def read_requests(path: Path) -> list[EditRequest]:
    """The requests of a JSON list of objects with ``EditRequest``'s fields; ValueError naming
    the file, the item and the fix for anything else."""
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--requests {path}: no such file; give a JSON list of requests") from None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"--requests {path}: not valid JSON ({err.msg} at line {err.lineno})"
        ) from None
    if not isinstance(items, list) or not items:
        raise ValueError(
            f"--requests {path}: expected a non-empty JSON list of objects with the fields "
            f"{', '.join(REQUEST_FIELDS)}, got {type(items).__name__}"
        )
    return [_request(path, i, item) for i, item in enumerate(items)]


def _request(path: Path, index: int, item: object) -> EditRequest:
    where = f"--requests {path}: item {index}"
    if not isinstance(item, dict):
        raise ValueError(
            f"{where} is a {type(item).__name__}, not an object with the fields "
            f"{', '.join(REQUEST_FIELDS)}"
        )
    missing = [name for name in REQUIRED_FIELDS if name not in item]
    unknown = sorted(set(item) - set(REQUEST_FIELDS))
    if missing or unknown:
        problems = [f"lacks {', '.join(missing)}"] if missing else []
        problems += [f"has unknown fields {', '.join(unknown)}"] if unknown else []
        raise ValueError(
            f"{where} {' and '.join(problems)}; its fields are {', '.join(REQUEST_FIELDS)}"
        )
    try:
        return EditRequest(**item)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def run_batch_edit(args: argparse.Namespace) -> int:
    requests = read_requests(args.requests)
    if args.json is not None:
        check_out_file(args.json)
    editor = build_editor(args)
    editor.warm_up()
    before = _probabilities(editor, requests)
    # the --hparams file's method hyperparameters, else the per-model ones placed at --layer
    result = editor.edit_batch(
        requests, args.method, keys=args.keys or "memit", method_hparams=args.method_hparams
    )
    after = _probabilities(editor, requests)
    editor.restore()
    facts = [
        {**fact.as_record(), **_named("before", probs_before), **_named("after", probs_after)}
        for fact, probs_before, probs_after in zip(result.facts, before, after, strict=True)
    ]
    for i, fact in enumerate(facts):
        print(_fact_line(i, fact))
    batch = {key: value for key, value in result.as_record().items() if key != "facts"}
    print(_batch_line(batch))
    if args.json is not None:
        write_json_output(args.json, {"model": editor.loaded.name, "facts": facts, "batch": batch})
    return 0


def _probabilities(editor: Editor, requests: list[EditRequest]) -> list[tuple[float, float | None]]:
    """Each fact's (p(target_new), p(target_true) or None) after its prompt, exp(−mean token
    NLL), scored in one batch."""
    prompts = [r.prompt.replace("{}", r.subject) for r in requests]
    true_rows = [i for i, r in enumerate(requests) if r.target_true is not None]
    targets = [r.target_new for r in requests] + [str(requests[i].target_true) for i in true_rows]
    nll = mean_token_nll(
        editor.loaded.model,
        editor.loaded.tokenizer,
        prompts + [prompts[i] for i in true_rows],
        targets,
    )
    probs = [math.exp(-float(x)) for x in nll]
    true = dict(zip(true_rows, probs[len(requests) :], strict=True))
    return [(probs[i], true.get(i)) for i in range(len(requests))]


def _named(when: str, probs: tuple[float, float | None]) -> dict[str, Any]:
    new, true = probs
    named: dict[str, Any] = {f"prob_target_{when}": new}
    if true is not None:
        named[f"prob_true_{when}"] = true
    return named


def _fact_line(index: int, fact: dict[str, Any]) -> str:
    request = fact["request"]
    return (
        f"fact {index}: {request['subject']!r} -> {request['target_new']!r}: "
        f"p(new) {fact['prob_target_before']:.3g} -> {fact['prob_target_after']:.3g}, "
        f"residual k_prompt {fact['relative_residual_k_prompt']:.3g}, "
        f"k* {fact['relative_residual_k_star']:.3g}"
    )


def _batch_line(batch: dict[str, Any]) -> str:
    sites = ", ".join(
        f"layer {site['layer']} |Δ| {site['delta_norm']:.3g} "
        f"cond {site['conditioning']['system_cond']:.3g}"
        for site in batch["sites"]
    )
    return f"{batch['method']} ({batch['key_choice']} keys), {batch['edit_seconds']:.2f} s: {sites}"
