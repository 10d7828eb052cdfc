"""The conformance properties as a pytest suite, to run inside a project's own pytest
(array-api-tests style)::

    ROME_CONFORM_EDITOR=my_pkg.edit:apply_edit ROME_CONFORM_EXPECT=r-rome \\
        pytest --pyargs rome_fast.conform.test_conformance

Settings (environment): ``ROME_CONFORM_EDITOR`` (required: a ``rome conform --editor`` SPEC),
``ROME_EDITOR_PATH``, ``ROME_CONFORM_CONFIG``, ``ROME_CONFORM_MODEL`` (default
``random:tiny-gpt2``), ``ROME_CONFORM_EXPECT``, ``ROME_CONFORM_CASES`` (default 2),
``ROME_CONFORM_STEPS``, ``ROME_CONFORM_SEED`` (default 0), ``ROME_CONFORM_SEQUENTIAL`` (N: the
edits in sequence of ``rome conform --sequential N``), ``ROME_CONFORM_TIMEOUT`` (seconds per
edit), ``ROME_CONFORM_METHOD`` and ``ROME_CONFORM_BATCH`` (for the batched entry,
``rome_fast.conform.test_batch_conformance``). One test per property, and one for the
verdict; each failure prints the measured numbers and the ``rome conform`` reproducer.
"""

from __future__ import annotations

import argparse
import functools
import os

import pytest

from rome_fast.conform.properties import PROPERTY_NAMES
from rome_fast.conform.run import ConformReport


def settings() -> argparse.Namespace:
    from rome_fast.cli.conform import PATH_VARIABLE
    from rome_fast.conform.timeouts import DEFAULT_TIMEOUT

    editor = os.environ.get("ROME_CONFORM_EDITOR")
    if not editor:
        pytest.skip("set ROME_CONFORM_EDITOR to the editor under test (a rome conform SPEC)")

    def number(name: str) -> int | None:
        value = os.environ.get(name)
        return None if value is None else int(value)

    return argparse.Namespace(
        editor=editor,
        editor_path=os.environ.get(PATH_VARIABLE),
        editor_variant=os.environ.get("ROME_CONFORM_CONFIG"),
        model=os.environ.get("ROME_CONFORM_MODEL", "random:tiny-gpt2"),
        cases=number("ROME_CONFORM_CASES") or 2,
        expect=os.environ.get("ROME_CONFORM_EXPECT"),
        json=None,
        layer=None,
        seed=number("ROME_CONFORM_SEED") or 0,
        steps=number("ROME_CONFORM_STEPS"),
        device="cpu",
        stats_npz=None,
        stats_corpus=None,
        stats_samples=None,
        sequential=number("ROME_CONFORM_SEQUENTIAL"),
        timeout=float(os.environ.get("ROME_CONFORM_TIMEOUT", DEFAULT_TIMEOUT)),
        method=os.environ.get("ROME_CONFORM_METHOD"),
        batch=number("ROME_CONFORM_BATCH"),
        projector=os.environ.get("ROME_CONFORM_PROJECTOR"),
    )


@functools.cache
def _report() -> ConformReport:
    from rome_fast.cli.conform import conformance_report

    chosen = settings()
    if chosen.batch is not None:
        pytest.skip("ROME_CONFORM_BATCH is set: run rome_fast.conform.test_batch_conformance")
    return conformance_report(chosen)


@pytest.mark.parametrize("name", PROPERTY_NAMES)
def test_property(name: str) -> None:
    report = _report()
    entry = report.properties()[name]
    if entry["passed"] is None:
        pytest.skip(f"{name} is not required here: {entry['detail']}")
    assert entry["passed"], f"{name}: {entry['detail']}\nreproduce: {report.reproducer}"


def test_verdict() -> None:
    report = _report()
    wanted = report.expect or "rome, r-rome or p-rome"
    assert report.verdict == report.expect if report.expect else report.verdict != "other", (
        f"behaves as {report.verdict} ({report.description}), expected {wanted}\n"
        f"reproduce: {report.reproducer}"
    )
