"""Forward hooks as context managers that always remove themselves.

Hooks never modify a module's output in place: they return a new tensor, so
autograd and any other hook see consistent values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (nothing after it is needed)."""


@dataclass
class Captured:
    """Tensors seen by a capture hook during the last forward pass."""

    input: Tensor | None = None  # (batch, seq, d_in)
    output: Tensor | None = None  # (batch, seq, d_out)
    output_is_tuple: bool = False  # the module returned (output, ...)
    calls: int = field(default=0)


def _first_tensor(value: Any) -> Tensor:
    first: Tensor = value[0] if isinstance(value, tuple) else value
    return first


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
        record.output_is_tuple = isinstance(out, tuple)
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


class _Replay(nn.Module):
    """Stands in for a block: returns a given hidden state and computes nothing."""

    def __init__(self, hidden: Tensor, as_tuple: bool) -> None:
        super().__init__()
        self.hidden = hidden
        self.as_tuple = as_tuple

    def forward(self, *_args: Any, **_kwargs: Any) -> Any:
        return (self.hidden,) if self.as_tuple else self.hidden


@contextmanager
def replay_blocks(
    blocks: nn.ModuleList, upto: int, hidden: Tensor, *, as_tuple: bool = False
) -> Iterator[None]:
    """Blocks ``0..upto`` replaced by stubs that return ``hidden``; the originals are put
    back on exit, whatever happens.

    Only the output of block ``upto`` is read by the blocks above, so the stubs below it
    may return anything: they return the same tensor.
    """
    originals = [blocks[i] for i in range(upto + 1)]
    stub = _Replay(hidden, as_tuple)
    try:
        for i in range(upto + 1):
            blocks[i] = stub
        yield
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


@contextmanager
def only_at(
    keep_by_module: Mapping[nn.Module, Tensor], device: torch.device | str = "cpu"
) -> Iterator[None]:
    """Run each position-wise module (an MLP: a token's output depends on that token's input
    only) on the positions ``keep`` of its (batch, seq, d) input only; every other position's
    output is 0.

    ``keep``: sorted, distinct indices into the flattened (batch · seq) positions, a CPU
    tensor (checked once here, then moved to ``device``, where the module's inputs are).
    Exact for whatever reads the module's output at ``keep`` only: an MLP skips the tokens
    nobody reads. A contiguous ``keep`` is taken as a slice (no copy).
    """
    handles = []
    try:
        for module, keep in keep_by_module.items():
            handles.extend(_register_only_at(module, keep, torch.device(device)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _register_only_at(module: nn.Module, keep: Tensor, device: torch.device) -> list[Any]:
    distinct_sorted = keep.ndim == 1 and bool((keep[1:] > keep[:-1]).all())
    if keep.device.type != "cpu" or not distinct_sorted:
        raise ValueError(
            "only_at needs a 1-D CPU tensor of sorted, distinct positions, got "
            f"shape {tuple(keep.shape)} on {keep.device}: sort it with torch.unique"
        )
    n_keep = keep.numel()
    first, last = (int(keep[0]), int(keep[-1])) if n_keep else (0, -1)
    span = (first, first + n_keep) if last - first + 1 == n_keep else None  # one run
    index = keep.to(device)
    leading: list[tuple[int, ...]] = []  # the input's (batch, seq) shape, set by the pre-hook

    def pre_hook(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0]  # (B, T, d)
        leading[:] = [tuple(hidden.shape[:-1])]
        if last >= math.prod(leading[0]):
            raise ValueError(
                f"only_at keeps position {last}, but the input has {math.prod(leading[0])}"
            )
        flat = hidden.reshape(-1, hidden.shape[-1])  # (B·T, d)
        picked = flat[span[0] : span[1]] if span else flat.index_select(0, index)
        return (picked[None], *args[1:])  # (1, n_keep, d)

    def post_hook(_m: nn.Module, _args: tuple[Any, ...], out: Any) -> Any:
        picked = _first_tensor(out)[0]  # (n_keep, d_out)
        n = math.prod(leading[0])
        if span:
            full = F.pad(picked, (0, 0, span[0], n - span[1]))
        else:
            full = picked.new_zeros(n, picked.shape[-1]).index_copy(0, index, picked)
        full = full.view(*leading[0], -1)  # (B, T, d_out)
        return (full, *out[1:]) if isinstance(out, tuple) else full

    return [module.register_forward_pre_hook(pre_hook), module.register_forward_hook(post_hook)]


def run_until(model: Callable[..., Any], **inputs: Any) -> None:
    """Run a forward pass that a :func:`capture` hook with ``stop=True`` ends early."""
    with suppress(StopForward):
        model(**inputs)
