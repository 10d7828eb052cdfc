"""The arithmetic of the v* loop: strict float32 by default, TF32 or bfloat16 on request.

The v* loop is where an edit spends its time (SPEC §3: 20 forward and 19 backward passes),
so it is the one place a lower matmul precision pays. Keys, ``v_init``, the statistics and
the update itself always stay float32 or better (``rome_fast.methods.rome.update``): a
rounding error there goes straight into ΔW, while the loop only steers δ, whose final value
is re-read in float32. The cost in accuracy is measured against float64, not assumed
(BENCHMARKS.md).

* ``fp32``: float32 matmuls, TF32 switched off for the loop even if the process enabled it;
* ``tf32``: TF32 tensor-core matmuls (CUDA only);
* ``bf16``: ``torch.autocast`` to bfloat16 for the loop's forward and backward passes.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from rome_fast.model.precision_names import PRECISIONS


class EmulatedBf16Warning(UserWarning):
    """bf16 asked for on a CPU without bfloat16 kernels: slower than fp32, not faster."""


@functools.cache
def cpu_bf16_is_emulated() -> bool:
    """Whether oneDNN has no bfloat16 kernels for this CPU (AVX2 and older), so that torch
    emulates bf16 matmuls: measured 8× slower than float32 forward and 30× backward on an
    AVX2-only EPYC on 2026-11-29 (a SmolLM2 edit: 15 s in fp32, over 6 minutes in bf16;
    docs/results/ci-time.md)."""
    try:
        return not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):  # a build without oneDNN: torch's own kernels
        return False


def check_precision(precision: str, device: torch.device | str | None = None) -> None:
    """A ValueError naming the fix when ``precision`` is unknown or not for ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"unknown v_precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
        )
    if precision == "tf32" and device is not None and torch.device(device).type != "cuda":
        raise ValueError(
            f"v* precision 'tf32' needs a CUDA device (TF32 is an NVIDIA tensor-core "
            f"format), the model is on {torch.device(device).type}; use 'fp32' or 'bf16'"
        )


@contextmanager
def _bf16_forward(device_type: str) -> Iterator[None]:
    with torch.autocast(device_type, dtype=torch.bfloat16):
        if device_type != "cpu":
            yield
            return
        # torch's fused CPU attention is slow in bf16 at the loop's few tokens (its backward
        # took 19 ms a call on SmolLM2, a quarter of the loop); the plain math path is not.
        with sdpa_kernel(SDPBackend.MATH):
            yield


@contextmanager
def loop_precision(
    precision: str, device: torch.device
) -> Iterator[Callable[[], AbstractContextManager[Any]]]:
    """Around the whole v* loop, forward and backward passes: the TF32 switches on ``device``
    (put back on exit). Yields the context each forward pass runs in (autocast for ``bf16``;
    backward passes run outside it, as torch recommends).
    """
    check_precision(precision, device)
    if precision == "bf16":
        if device.type == "cpu" and cpu_bf16_is_emulated():
            warnings.warn(
                "this CPU has no bfloat16 instructions (AVX512_BF16/AMX), so the bf16 v* loop "
                "runs emulated, many times slower than fp32; use fp32 here, bf16 on a GPU or "
                "a CPU with bfloat16",
                EmulatedBf16Warning,
                stacklevel=3,
            )
        yield lambda: _bf16_forward(device.type)
        return
    if device.type != "cuda":
        yield nullcontext
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield nullcontext
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
