"""Reproducers that run: a failure's snippet, pasted into a fresh interpreter, raises the same
failure (the battery's rows and the tests' notes alike, a sample of each)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

import tests.test_properties as properties
from rome_fast.infra.reproducer import Unreproducible, call_snippet, import_lines, python_source
from rome_fast.methods.rome.variants import get_variant
from rome_fast.testing import CaseParams, check_update
from tests.assertions import failure_in_fresh_interpreter, reproducer_of
from tests.mutants import UPDATE_MUTANTS
from tests.test_tokens import assert_subject_ends_at

A_CASE = CaseParams(seed=3, d_in=4, d_out=3, log10_cond=1.0, angle_deg=0.0, with_bias=True)

VALUES: list[object] = [
    None,
    1.5,
    -0.0,
    math.inf,
    (3,),
    {"a": [1, (2.5, "b")]},
    np.arange(3.0) / 7,
    torch.tensor([[1.0, 2.0]], dtype=torch.float16),
    torch.float32,
    A_CASE,
    get_variant("rome"),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_a_value_is_rebuilt_from_its_source(value: object) -> None:
    source = python_source(value)
    namespace: dict[str, object] = {}
    exec("\n".join([*import_lines(source.imports), f"rebuilt = {source.expression}"]), namespace)
    rebuilt = namespace["rebuilt"]
    assert type(rebuilt) is type(value)
    if isinstance(value, np.ndarray | torch.Tensor):
        assert isinstance(rebuilt, np.ndarray | torch.Tensor)
        assert rebuilt.dtype == value.dtype
        assert rebuilt.tolist() == value.tolist()
    else:
        assert rebuilt == value


def test_nan_and_unimportable_functions_are_named() -> None:
    assert python_source(math.nan).expression == "float('nan')"

    def local_variant() -> None: ...

    with pytest.raises(Unreproducible, match="local_variant is defined where"):
        call_snippet(local_variant)


def test_battery_reproducers_raise_the_reported_failure() -> None:
    """A whole-update mutant (its function imported by the snippet); the registered-variant
    snippet is executed by tests/test_check_variant.py."""
    report = check_update(
        UPDATE_MUTANTS["bias_added"], inserts_at="k_star", max_examples=20, shrink=False
    )
    rows = [r for r in report.results if r.status == "failed"]
    assert {r.name for r in rows} >= {"exact_insertion", "bias_cancellation"}
    for row in rows[:2]:  # a sample: each costs a fresh interpreter (torch import)
        snippet = row.reproducer.removeprefix("reproduce with:\n")
        assert snippet != row.reproducer, row.reproducer
        raised = failure_in_fresh_interpreter(snippet)
        assert raised == f"rome_fast.testing.PropertyFailure: {row.message}", (row.name, snippet)


def exception_line(failure: BaseException) -> str:
    """The line a fresh interpreter prints for ``failure``: its type and first message line."""
    kind = type(failure)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return f"{name}: {str(failure).splitlines()[0]}"


def test_failing_checks_carry_reproducers_that_fail_alike() -> None:
    """A test of the suite on inputs it fails for (u scaled by 0: a zero denominator), and a
    test helper given a subject that no token ends."""
    check = properties.test_rescaling_u_leaves_update_unchanged.hypothesis.inner_test  # type: ignore[attr-defined]
    calls: list[tuple[Callable[[], object], type[Exception]]] = [
        (lambda: check(params=A_CASE, variant="r-rome", s=0.0), ValueError),
        (lambda: assert_subject_ends_at("{}s are", "Rome"), ValueError),
    ]
    for call, kind in calls:
        with pytest.raises(kind) as caught:
            call()
        raised = failure_in_fresh_interpreter(reproducer_of(caught.value))
        assert raised == exception_line(caught.value), reproducer_of(caught.value)
