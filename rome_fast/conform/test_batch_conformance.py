"""The batched conformance properties as a pytest suite, to run inside a project's own pytest::

    ROME_CONFORM_EDITOR=my_pkg.edit:apply_batch ROME_CONFORM_METHOD=memit ROME_CONFORM_BATCH=3 \\
        ROME_CONFORM_EXPECT=memit pytest --pyargs rome_fast.conform.test_batch_conformance

The settings of ``rome_fast.conform.test_conformance`` (``ROME_CONFORM_CASES``: how many
batches; ``ROME_CONFORM_CONFIG``: ours' key choice; ``ROME_CONFORM_EXPECT``: the key choice
required) and ``ROME_CONFORM_BATCH`` (required: the facts per batch), ``ROME_CONFORM_METHOD``
(memit, emmet or alphaedit; default memit), ``ROME_CONFORM_PROJECTOR`` (EasyEdit AlphaEdit's P:
code or float64; ``rome conform --projector``). One test per batched property, and one for the
verdict; each failure prints the measured numbers and the ``rome conform`` reproducer.
"""

from __future__ import annotations

import functools

import pytest

from rome_fast.conform.batch_properties import BATCH_PROPERTY_NAMES
from rome_fast.conform.batch_run import BatchReport
from rome_fast.conform.test_conformance import settings


@functools.cache
def _report() -> BatchReport:
    from rome_fast.cli.conform import command_line
    from rome_fast.cli.conform_batch import batch_conformance_report

    chosen = settings()
    if chosen.batch is None:
        pytest.skip("set ROME_CONFORM_BATCH to the facts per batch (and ROME_CONFORM_METHOD)")
    return batch_conformance_report(chosen, command_line(chosen))


@pytest.mark.parametrize("name", BATCH_PROPERTY_NAMES)
def test_batch_property(name: str) -> None:
    report = _report()
    entry = report.properties()[name]
    if entry["passed"] is None:
        pytest.skip(f"{name} is not required here: {entry['detail']}")
    assert entry["passed"], f"{name}: {entry['detail']}\nreproduce: {report.reproducer}"


def test_batch_verdict() -> None:
    report = _report()
    wanted = report.expect or "one key choice"
    assert report.verdict == report.expect if report.expect else report.verdict != "other", (
        f"writes at {report.verdict} ({report.description}), expected {wanted}\n"
        f"reproduce: {report.reproducer}"
    )
