"""Float32 linear layers through oneDNN on the CPU, where that is the faster kernel.

torch computes a float32 ``nn.Linear`` on the CPU with MKL's ``sgemm``, which on AMD CPUs runs
its AVX2 kernels; oneDNN, also inside torch, runs AVX-512 there. Measured on one Zen 5 core:
a (148 × 576) · (576 × 1536) product at 108 GFLOP/s with MKL and 240–260 GFLOP/s with
oneDNN, both IEEE float32 with the same error against float64. :func:`onednn_linears` routes
the float32 linear layers of a CPU model through oneDNN inside a block (the forward pass and
the backward pass's input gradient) when :func:`onednn_is_faster` measured it faster on this
machine (once per process, on first use), and puts every module's own ``forward`` back on
exit, whatever happens. Under autocast a layer runs its own forward, as autocast expects.
Like the other loop switches, it changes the model for the duration of the block: do not
run the same model from another thread meanwhile.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from rome_fast.model.weights import module_bias, weight_matrix


def _onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight.T + bias`` by oneDNN: x (..., d_in), weight (d_out, d_in) of any strides."""
    out: Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return out


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # the input is kept only when the weight's gradient needs it
        ctx.save_for_backward(x if weight.requires_grad else None, weight)
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        grad_x = _onednn_linear(grad, weight.T, None) if needs_x else None
        flat = grad.reshape(-1, grad.shape[-1])  # (N, d_out)
        grad_weight = flat.T @ x.reshape(-1, x.shape[-1]) if needs_weight else None
        grad_bias = flat.sum(0) if needs_bias else None
        return grad_x, grad_weight, grad_bias


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` computed by oneDNN, differentiable."""
    out: Tensor = _OneDNNLinear.apply(x, weight, bias)  # type: ignore[no-untyped-call]  # torch's
    return out


def _best_seconds(fn: Callable[[], Any], repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def onednn_available() -> bool:
    """Whether this torch build has oneDNN's linear operator (x86 builds from PyPI do)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        _onednn_linear(torch.ones(1, 1), torch.ones(1, 1), None)
    except (AttributeError, RuntimeError):
        return False
    return True


_pinned: bool | None = None  # a choice made by another process (pin_onednn)


ONEDNN_ENV = "ROME_ONEDNN"  # "1" or "0": the choice without a measurement
_ENV_CHOICES = {"1": True, "0": False}


def onednn_is_faster() -> bool:
    """Whether oneDNN's float32 linear beats torch's default on this CPU, measured once per
    process on a 256 × 1024 × 1024 product (it must win by 10%), unless pinned: by
    :func:`pin_onednn`, or by ``ROME_ONEDNN=1``/``0`` (the two kernels round differently,
    so runs meant to agree bit for bit across processes must not leave it to a timing)."""
    if _pinned is not None:
        return _pinned
    env = os.environ.get(ONEDNN_ENV)
    if env is None:
        return _measured_onednn_is_faster()
    if env not in _ENV_CHOICES:
        raise ValueError(f"{ONEDNN_ENV} must be 1 (oneDNN) or 0 (torch's default), got {env!r}")
    return _ENV_CHOICES[env]


def pin_onednn(choice: bool) -> None:
    """Use ``choice`` instead of measuring: a worker follows its driver's measured choice,
    so that the two kernels' different roundings never make a distributed run differ from
    the same run in one process."""
    global _pinned  # noqa: PLW0603  one process-wide choice, as the measured one is
    if choice and not onednn_available():
        raise RuntimeError("this worker's torch build has no oneDNN linear operator")
    _pinned = choice


@functools.cache
def _measured_onednn_is_faster() -> bool:
    if not onednn_available():
        return False
    generator = torch.Generator().manual_seed(0)  # the global random state stays untouched
    x = torch.randn(256, 1024, generator=generator)
    weight = torch.randn(1024, 1024, generator=generator)
    onednn = _best_seconds(lambda: _onednn_linear(x, weight, None))
    default = _best_seconds(lambda: torch.nn.functional.linear(x, weight))
    return onednn < 0.9 * default


def _routable(module: nn.Module) -> bool:
    """A plain float32 CPU ``nn.Linear``/``Conv1D``: not a subclass with a forward of its own
    (LoRA, quantized), and no instance ``forward`` already set (by an enclosing block or
    another library)."""
    own = type(module).forward
    if own not in (nn.Linear.forward, Conv1D.forward) or "forward" in vars(module):
        return False
    weight = module.weight
    return weight.device.type == "cpu" and weight.dtype == torch.float32


def _forward_through_onednn(module: nn.Module) -> Callable[[Tensor], Tensor]:
    own_forward = type(module).forward

    def forward(x: Tensor) -> Tensor:
        if torch.is_autocast_enabled("cpu") or x.dtype != torch.float32:
            own: Tensor = own_forward(module, x)
            return own
        return onednn_linear(x, weight_matrix(module), module_bias(module))

    return forward


@contextmanager
def onednn_linears(model: nn.Module, *, force: bool | None = None) -> Iterator[bool]:
    """Inside the block, the model's float32 CPU linear layers (``nn.Linear`` and GPT-2's
    ``Conv1D``) compute through oneDNN; yields whether they do. ``force`` overrides the
    measured choice (tests)."""
    use = onednn_is_faster() if force is None else force
    if use and not onednn_available():
        raise RuntimeError(
            "this torch build has no oneDNN linear operator (torch.ops.mkldnn._linear_pointwise);"
            " leave force unset to use torch's default kernels"
        )
    routed: list[nn.Module] = []
    settings: Any = getattr(torch.backends.mkldnn, "matmul", None)  # torch ≥ 2.9, untyped
    precision = getattr(settings, "fp32_precision", None)
    try:
        if use:
            # IEEE float32 inside, even if the process allowed oneDNN bf16/TF32 arithmetic
            if precision is not None:
                settings.fp32_precision = "ieee"
            for module in model.modules():
                if _routable(module):
                    module.forward = _forward_through_onednn(module)
                    routed.append(module)
        yield bool(routed)
    finally:
        for module in routed:
            del module.forward
        if precision is not None:
            settings.fp32_precision = precision
