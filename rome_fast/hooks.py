"""Forward hooks as context managers that always remove themselves.

Hooks never modify a module's output in place: they return a new tensor, so
autograd and any other hook see consistent values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (nothing after it is needed)."""


@dataclass
class Captured:
    """Tensors seen by a capture hook during the last forward pass."""

    input: Tensor | None = None  # (batch, seq, d_in)
    output: Tensor | None = None  # (batch, seq, d_out)
    calls: int = field(default=0)


def _first_tensor(value: Any) -> Tensor:
    return value[0] if isinstance(value, tuple) else value


@contextmanager
def capture(module: nn.Module, *, stop: bool = False, output: bool = False) -> Iterator[Captured]:
    """Record the module's input (and output when ``output``) on each call.

    With ``stop`` the forward pass is ended right after the capture: use it with
    :func:`run_until` when only the key at this module is needed.
    """
    record = Captured()

    def pre_hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
        record.input = _first_tensor(args)
        record.calls += 1
        if stop and not output:
            raise StopForward

    def post_hook(_m: nn.Module, _args: tuple[Any, ...], out: Any) -> None:
        record.output = _first_tensor(out)
        if stop:
            raise StopForward

    handles = [module.register_forward_pre_hook(pre_hook)]
    if output:
        handles.append(module.register_forward_hook(post_hook))
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def add_to_output(
    module: nn.Module, delta: Tensor, rows: Tensor, positions: Tensor
) -> Iterator[None]:
    """Add ``delta`` (d_out,) to the module's output at ``(rows[i], positions[i])``.

    The output is replaced by a new tensor (``index_put`` out of place), so the
    module's own result is never mutated.
    """

    def hook(_m: nn.Module, _args: tuple[Any, ...], out: Any) -> Any:
        hidden = _first_tensor(out)
        index = (rows.to(hidden.device), positions.to(hidden.device))
        shifted = hidden[index] + delta.to(hidden.dtype)
        edited = hidden.index_put(index, shifted)
        return (edited, *out[1:]) if isinstance(out, tuple) else edited

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def run_until(model: Callable[..., Any], **inputs: Any) -> None:
    """Run a forward pass that a :func:`capture` hook with ``stop=True`` ends early."""
    with suppress(StopForward):
        model(**inputs)
