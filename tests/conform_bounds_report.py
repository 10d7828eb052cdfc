"""The bounds table of docs/results/conformance-bounds.md:
``python -m tests.conform_bounds_report --out docs/results/conformance-bounds.md`` (the harness
of tests/conform_setup.py — fixed templates, a seeded random SPD C — on each tiny family, with
the correct controls and the planted-bug editors of tests/conform_editors.py)."""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import math
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rome_fast.conform.ours import OurEditor
from rome_fast.conform.properties import ESSENCE_MARGIN, MARGIN, NUMERIC
from rome_fast.conform.protocol import CallableEditor, EditorUnderTest
from rome_fast.conform.public import LAYOUTS, PublicEditor
from rome_fast.conform.run import ConformReport
from rome_fast.model.loader import LoadedModel, load_model
from tests import conform_editors
from tests.anchors import ANCHORS_ENV
from tests.conform_setup import conform, conform_on, failed
from tests.models import FAMILIES

Factory = Callable[[], EditorUnderTest]
ROME_FAMILIES = ("tiny-gpt2", "tiny-gptj")  # the paper's code reads config.n_embd


def _planted(name: str) -> Factory:
    return functools.partial(CallableEditor, getattr(conform_editors, name), name)


def controls(anchors: Path, family: str) -> dict[str, tuple[Factory, str]]:
    """Correct editors (name -> (factory, the variant expected))."""
    found: dict[str, tuple[Factory, str]] = {
        f"rome-verify[{v}]": (functools.partial(OurEditor, v), v)
        for v in ("rome", "r-rome", "p-rome")
    }
    found["naive r-rome (independent)"] = (_planted("naive_r_rome"), "r-rome")
    for spec, expected in (("easyedit-r-rome", "r-rome"), ("easyedit-rome", "rome")):
        found[spec] = (
            functools.partial(PublicEditor, LAYOUTS[spec], anchors / "easyedit"),
            expected,
        )
    if family in ROME_FAMILIES:
        checkout = anchors / "rebuilding-rome"
        for config in ("rome", "r-rome", "p-rome"):
            found[f"rebuilding-rome[{config}]"] = (
                functools.partial(PublicEditor, LAYOUTS["rebuilding-rome"], checkout, config),
                config,
            )
    return found


PLANTED: dict[str, tuple[str, dict[str, object]]] = {  # name -> (targeted property, options)
    "bf16_update": ("rank_one", {}),
    "scaled_update": ("matches_reference", {}),
    "rank_two_term": ("rank_one", {}),
    "no_kl_term": ("essence_drift", {}),
    "tenth_kl_term": ("essence_drift", {}),
    "wrong_layer": ("only_edited_weight", {}),
    "training_mode": ("model_state", {}),
    "hook_left": ("model_state", {}),
    "StaleWeight": ("insertion_key", {"sequential": True}),
    "non_finite": ("finite", {}),
    "raises_midway": ("edit_completed", {}),
    "hangs": ("edit_completed", {"timeout": 2.0}),
}


# The properties by margin: essence_drift has its own (rome_fast/conform/properties.py).
ESSENCE, OTHERS = "essence_drift", "others"


def _group(prop: str) -> str:
    return ESSENCE if prop == ESSENCE else OTHERS


PRETRAINED = ("smollm2",)  # families that are real models: load_model(name), not random


@functools.cache
def _pretrained(name: str) -> LoadedModel:
    return load_model(name)


def run(editor: EditorUnderTest, family: str, **options: Any) -> ConformReport:
    """The harness on a fresh copy of ``family``: a tiny random model, or a real one."""
    if family not in PRETRAINED:
        return conform(editor, family, **options)
    shared = _pretrained(family)
    model = copy.deepcopy(shared.model)
    return conform_on(
        LoadedModel(model, shared.tokenizer, shared.adapter, shared.name), editor, **options
    )


def _make(name: str) -> EditorUnderTest:
    if name == "StaleWeight":
        return conform_editors.StaleWeight()
    return _planted(name)()


def _ratio(entry: dict[str, object]) -> float:
    value, floor = entry.get("value"), entry.get("floor")
    assert isinstance(value, float)
    if not isinstance(floor, float) or math.isnan(floor) or floor == 0:
        return math.nan
    return value / floor


def _cell(entry: dict[str, object], key: str) -> str:
    value = entry.get(key, math.nan)
    return "—" if not isinstance(value, float) or math.isnan(value) else f"{value:.3g}"


def _required_ratios(report: ConformReport) -> dict[str, float]:
    """value / floor of each numeric property the report requires."""
    props = report.properties()
    return {p: _ratio(props[p]) for p in NUMERIC if props[p]["passed"] is not None}


def control_row(family: str, name: str, report: ConformReport) -> str:
    ratios = _required_ratios(report)
    cells = " | ".join(f"{ratios[p]:.2g}" if p in ratios else "—" for p in NUMERIC)
    verdict = f"{report.verdict} ({'pass' if report.ok else 'FAIL'})"
    return f"| {family} | {name} | {verdict} | {cells} |"


def floor_row(family: str, report: ConformReport) -> str:
    props = report.properties()
    cells = " | ".join(f"{_cell(props[p], 'floor')} ({_cell(props[p], 'bound')})" for p in NUMERIC)
    return f"| {family} | {cells} |"


def planted_row(family: str, name: str, target: str, report: ConformReport) -> str:
    entry = report.properties()[target]
    ratio = _ratio(entry)
    numbers = " | ".join(_cell(entry, key) for key in ("value", "floor", "bound"))
    shown = "—" if math.isnan(ratio) else f"{ratio:.3g}"
    caught = ", ".join(sorted(failed(report)))
    return f"| {family} | {name} | {target} | {numbers} | {shown} | {caught} | {report.ok} |"


def _header(*columns: str) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def write(
    args: argparse.Namespace,
    done: list[str],
    tables: tuple[list[str], list[str], list[str]],
    worst_control: dict[str, float],
    least_planted: dict[str, float],
) -> None:
    floors, control_table, planted_table = tables
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    lines = [
        "# Conformance bounds: measured floors, correct controls, planted bugs",
        "",
        f"Written by `python -m tests.conform_bounds_report --out {args.out} --families "
        f"{args.families} --steps {args.steps} --cases {args.cases}"
        f"{f' --only {args.only}' if args.only else ''}` ({platform.machine()} "
        f"CPU, commit {commit}, {datetime.date.today().isoformat()}): the harness of "
        "tests/conform_setup.py (fixed templates, a "
        f"seeded random SPD C), {args.steps} v* steps, {args.cases} case(s) per run (two, "
        "in sequence, for StaleWeight). A numeric property's bound is MARGIN × floor with "
        f"MARGIN = {MARGIN:g} ({ESSENCE_MARGIN:g} for essence_drift); its floor is the largest "
        "value a correct float32 editor reaches "
        "on the same case against the float64 truth (rome_fast/conform/floors.py). Exact "
        "properties (revert, determinism) have bound 0; the others are checks without a "
        "tolerance (completed, finite, model state, only the edited weight, denominator). "
        f"Families done: {', '.join(done)}.",
        "",
        "## Floors and bounds per family (our r-ROME run)",
        "",
        *floors,
        "",
        "## Correct controls: value / floor of each required numeric property",
        "",
        *control_table,
        "",
        "## Planted bugs: the property that targets each",
        "",
        *planted_table,
        "",
        f"Largest value/floor of a correct control: {worst_control[OTHERS]:.3g} "
        f"({worst_control[ESSENCE]:.3g} on essence_drift). Smallest value/floor of a planted "
        f"bug on its numeric target: {least_planted[OTHERS]:.3g} ({least_planted[ESSENCE]:.3g} "
        f"on essence_drift). MARGIN = {MARGIN:g} ({ESSENCE_MARGIN:g} for essence_drift).",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--anchors",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared" / "anchors",
        help=f"the public checkouts (default ../shared/anchors, as ${ANCHORS_ENV} in the tests)",
    )
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cases", type=int, default=1)
    parser.add_argument(
        "--only", default="", help="comma-separated editors to run (default: every one)"
    )
    args = parser.parse_args()
    only = set(args.only.split(",")) - {""}
    floors = _header("family", *(f"{p} floor (bound)" for p in NUMERIC))
    control_table = _header("family", "editor", "verdict", *(f"{p} value/floor" for p in NUMERIC))
    planted_table = _header(
        "family",
        "planted editor",
        "targeted property",
        "value",
        "floor",
        "bound",
        "value/floor",
        "failed properties",
        "ok",
    )
    worst_control = {OTHERS: 0.0, ESSENCE: 0.0}
    least_planted = {OTHERS: math.inf, ESSENCE: math.inf}
    done: list[str] = []
    for family in args.families.split(","):
        for name, (factory, expect) in controls(args.anchors, family).items():
            if only and name not in only:
                continue
            report = run(factory(), family, expect=expect, cases=args.cases, steps=args.steps)
            for prop, ratio in _required_ratios(report).items():
                worst_control[_group(prop)] = max(worst_control[_group(prop)], ratio)
            control_table.append(control_row(family, name, report))
            if name == "rome-verify[r-rome]":
                floors.append(floor_row(family, report))
            print(family, name, report.ok, flush=True)
            write(
                args,
                [*done, family],
                (floors, control_table, planted_table),
                worst_control,
                least_planted,
            )
        for name, (target, options) in PLANTED.items():
            if only and name not in only:
                continue
            cases = max(args.cases, 2) if options.get("sequential") else args.cases
            report = run(
                _make(name), family, expect="r-rome", cases=cases, steps=args.steps, **options
            )
            ratio = _ratio(report.properties()[target])
            if not math.isnan(ratio):
                least_planted[_group(target)] = min(least_planted[_group(target)], ratio)
            planted_table.append(planted_row(family, name, target, report))
            print(family, name, target, report.ok, flush=True)
            write(
                args,
                [*done, family],
                (floors, control_table, planted_table),
                worst_control,
                least_planted,
            )
        done.append(family)


if __name__ == "__main__":
    main()
