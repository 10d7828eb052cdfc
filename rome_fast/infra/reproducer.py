"""Reproducers that run: a failing call written as Python a fresh interpreter runs as pasted.

``call_snippet(fn, *args, **kwargs)`` writes the imports the call needs, then the call, each
argument written from its data (``python_source``): literals by ``repr``, dtypes as
``torch.<name>``, arrays and tensors from their lists of numbers, dataclass instances from
their fields, functions and classes by importing the name a fresh interpreter finds them
under (a hypothesis test's inner function through ``test.hypothesis.inner_test``). Nothing is
built by editing another snippet's text. What cannot be imported (a function defined inside
another, or in ``__main__``) raises ``Unreproducible`` naming it.

``reproducible`` wraps a check so that any exception it raises carries the snippet of the
failing call as a note (PEP 678 ``add_note``, as array-api-tests does): it prints under the
traceback, and pasted into a fresh interpreter (from the folder the check's module is
imported from) it raises the same failure.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import math
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch

HEADER = "reproduce with:"

P = ParamSpec("P")
R = TypeVar("R")


class Unreproducible(TypeError):
    """A value a fresh interpreter cannot rebuild from its data."""


@dataclasses.dataclass(frozen=True)
class Source:
    """Python that evaluates to a value, and the import lines it needs."""

    expression: str
    imports: frozenset[tuple[str, str]] = frozenset()  # (module, name): from module import name


def python_source(value: object) -> Source:  # noqa: PLR0911  one return per kind of value
    """The source of ``value`` for a fresh interpreter; ``Unreproducible`` if there is none."""
    if value is None or isinstance(value, bool | int | str | bytes):
        return Source(repr(value))
    if isinstance(value, float):
        return Source(repr(value) if math.isfinite(value) else f"float({str(value)!r})")
    if isinstance(value, np.generic):
        return python_source(value.item())
    if isinstance(value, tuple | list):
        return _sequence_source(value)
    if isinstance(value, dict):
        return _dict_source(value)
    if isinstance(value, torch.dtype):
        return Source(str(value), frozenset({("torch", "")}))
    if isinstance(value, np.ndarray):
        return _array_source(value)
    if isinstance(value, torch.Tensor):
        return _tensor_source(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _dataclass_source(value)
    return _imported_name(value)


def _joined(parts: list[Source], template: str) -> Source:
    imports = frozenset().union(*(p.imports for p in parts))
    return Source(template.format(", ".join(p.expression for p in parts)), imports)


def _sequence_source(value: tuple[object, ...] | list[object]) -> Source:
    parts = [python_source(item) for item in value]
    if isinstance(value, list):
        return _joined(parts, "[{}]")
    return _joined(parts, "({},)" if len(value) == 1 else "({})")


def _dict_source(value: dict[object, object]) -> Source:
    keys = [python_source(k) for k in value]
    values = [python_source(v) for v in value.values()]
    items = [
        Source(f"{k.expression}: {v.expression}", k.imports | v.imports)
        for k, v in zip(keys, values, strict=True)
    ]
    return _joined(items, "{{{}}}")


def _array_source(value: np.ndarray) -> Source:
    numbers = python_source(value.tolist())  # floats written by repr round-trip exactly
    expression = f"numpy.array({numbers.expression}, dtype={str(value.dtype)!r})"
    return Source(expression, numbers.imports | {("numpy", "")})


def _tensor_source(value: torch.Tensor) -> Source:
    numbers = python_source(value.detach().cpu().tolist())
    device = "" if value.device.type == "cpu" else f", device={str(value.device)!r}"
    expression = f"torch.tensor({numbers.expression}, dtype={value.dtype}{device})"
    return Source(expression, numbers.imports | {("torch", "")})


def _dataclass_source(value: Any) -> Source:
    cls = _imported_name(type(value))
    fields = [f for f in dataclasses.fields(value) if f.init]
    parts = [python_source(getattr(value, f.name)) for f in fields]
    arguments = [f"{f.name}={p.expression}" for f, p in zip(fields, parts, strict=True)]
    imports = cls.imports.union(*(p.imports for p in parts))
    return Source(f"{cls.expression}({', '.join(arguments)})", imports)


def _imported_name(value: object) -> Source:
    """``value`` by the name its module holds it under (a function, a class, a constant)."""
    module_name = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        raise Unreproducible(f"{value!r} has no importable name and no data to rebuild it from")
    if "<locals>" in qualname or module_name == "__main__":
        raise Unreproducible(
            f"{qualname} is defined where a fresh interpreter cannot import it ({module_name}); "
            "define it at the top level of a module to get a reproducer that runs"
        )
    module = importlib.import_module(module_name)
    top, *rest = qualname.split(".")
    found: object = module
    for part in (top, *rest):
        found = getattr(found, part, None)
    expression = qualname
    inner = getattr(getattr(found, "hypothesis", None), "inner_test", None)
    if found is not value and inner is value:  # a @given test: call what it wraps
        expression = f"{qualname}.hypothesis.inner_test"
    elif found is not value:
        raise Unreproducible(f"{module_name}.{qualname} is not {value!r}")
    return Source(expression, frozenset({(module_name, top)}))


def import_lines(imports: frozenset[tuple[str, str]]) -> list[str]:
    """``import m`` for a whole module (name ""), ``from m import a, b`` otherwise."""
    modules = sorted(m for m, name in imports if not name)
    names: dict[str, list[str]] = {}
    for module, name in sorted(i for i in imports if i[1]):
        names.setdefault(module, []).append(name)
    lines = [f"import {m}" for m in modules]
    return lines + [f"from {m} import {', '.join(n)}" for m, n in names.items()]


def call_snippet(fn: Callable[..., object], /, *args: object, **kwargs: object) -> str:
    """Import lines, then ``fn(*args, **kwargs)`` with every argument written from its data."""
    target = python_source(fn)
    positional = [python_source(a) for a in args]
    keywords = {name: python_source(v) for name, v in kwargs.items()}
    arguments = [p.expression for p in positional]
    arguments += [f"{name}={s.expression}" for name, s in keywords.items()]
    imports = target.imports.union(*(s.imports for s in [*positional, *keywords.values()]))
    call = f"{target.expression}({', '.join(arguments)})"
    return "\n".join([*import_lines(imports), call])


def reproducer_note(fn: Callable[..., object], /, *args: object, **kwargs: object) -> str:
    """The note a failure of ``fn(*args, **kwargs)`` carries: the header and the snippet."""
    try:
        return f"{HEADER}\n{call_snippet(fn, *args, **kwargs)}"
    except Unreproducible as why:
        return f"no reproducer: {why}"


def reproducible(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` whose exceptions carry the snippet that repeats the failing call (a note)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as failure:
            bound = signature.bind(*args, **kwargs)
            failure.add_note(reproducer_note(checked, *bound.args, **bound.kwargs))
            raise

    return checked
