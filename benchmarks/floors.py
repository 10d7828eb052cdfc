"""Machine peaks and physical floors: the least time an operation can take on this machine.

A floor is a lower bound, ``max(bytes moved / memory bandwidth, flops / peak flops)``, counted
for the work the operation cannot avoid (a forward pass only through the blocks it needs, the
weight read and written once). On a CPU the peaks are *measured* here (a large copy for the
bandwidth, a large float32 matmul for the flops); on a CUDA card they are the vendor's numbers
for that card (``CARD_SPECS``), and the measured copy bandwidth is reported next to them.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rome_fast.model.linear import onednn_is_faster, onednn_linear
from rome_fast.model.loader import LoadedModel

# Vendor peaks, dense (no sparsity): bytes/s of HBM and float32 (non-tensor-core) flop/s;
# TF32/bf16 tensor-core peaks for the bf16/TF32 paths.
CARD_SPECS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bandwidth": 3.35e12, "fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12},
    "H100 PCIe": {"bandwidth": 2.0e12, "fp32": 51e12, "tf32": 378e12, "bf16": 756e12},
    "H100 NVL": {"bandwidth": 3.9e12, "fp32": 60e12, "tf32": 417.5e12, "bf16": 835e12},
    "H200": {"bandwidth": 4.8e12, "fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12},
}


@dataclass(frozen=True)
class Peaks:
    """What one machine can do at best; ``source`` says where each number comes from."""

    device: str
    name: str
    bandwidth: float  # bytes/s used for floors
    flops_fp32: float  # flop/s used for float32 floors
    flops_bf16: float  # flop/s used for bf16 floors
    measured_bandwidth: float  # bytes/s of a large device copy, measured here
    measured_flops_fp32: float  # flop/s of a large float32 torch matmul, measured here
    source: str
    threads: int
    cache_bytes: int  # last-level cache: smaller working sets are not bandwidth-bound
    flops_tf32: float = 0.0  # flop/s of TF32 matmuls (CUDA); 0: none

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flops(self, dtype: torch.dtype, precision: str = "fp32") -> float:
        """Peak flop/s for matmuls on ``dtype`` data run at ``precision`` (``fp32``, or the
        v* loop's ``tf32``/``bf16``)."""
        if precision == "bf16" or dtype in (torch.bfloat16, torch.float16):
            return self.flops_bf16
        if precision == "tf32" and self.flops_tf32 > 0:
            return self.flops_tf32
        return self.flops_fp32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn: Any, device: torch.device, repeats: int) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure_bandwidth(device: torch.device, n_bytes: int = 1 << 28, repeats: int = 5) -> float:
    """Bytes/s of ``dst.copy_(src)`` on ``n_bytes`` (read + write counted)."""
    src = torch.ones(n_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), device, repeats)
    return 2 * n_bytes / seconds


def measure_matmul_flops(
    device: torch.device,
    n: int = 2048,
    repeats: int = 3,
    dtype: torch.dtype = torch.float32,
    *,
    onednn: bool = False,
) -> float:
    """Flop/s of an (n × n) @ (n × n) matmul (float32: TF32 as currently configured); with
    ``onednn`` through oneDNN (``rome_fast.model.linear``, CPU)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    product = (lambda: onednn_linear(a, b.T)) if onednn else (lambda: a @ b)
    seconds = _best_seconds(product, device, repeats)
    return 2 * n**3 / seconds


def cpu_name() -> str:
    try:
        with Path("/proc/cpuinfo").open() as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cache_bytes() -> int:
    """Size of the largest CPU cache (sysfs), 0 when unknown."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip()
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes, default=0)


def card_spec(name: str) -> tuple[str, dict[str, float]] | None:
    """The vendor spec whose key names this card (``NVIDIA H100 80GB HBM3`` → H100 SXM)."""
    upper = name.upper()
    if "H200" in upper:
        return "H200", CARD_SPECS["H200"]
    if "H100" in upper:
        key = "H100 PCIe" if "PCIE" in upper else "H100 NVL" if "NVL" in upper else "H100 SXM"
        return key, CARD_SPECS[key]
    return None


def machine_peaks(device: torch.device | str = "cpu", *, quick: bool = False) -> Peaks:
    """Measure (and for known cards, look up) this machine's peaks."""
    device = torch.device(device)
    size, n = (1 << 24, 512) if quick else (1 << 28, 2048)
    bandwidth = measure_bandwidth(device, n_bytes=size)
    flops = measure_matmul_flops(device, n=n)
    threads = torch.get_num_threads()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        l2 = int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))
        spec = card_spec(name)
        if spec is not None:
            key, numbers = spec
            return Peaks(
                "cuda",
                name,
                numbers["bandwidth"],
                numbers["fp32"],
                numbers["bf16"],
                bandwidth,
                flops,
                f"vendor spec ({key}); measured copy/matmul beside",
                threads,
                l2,
                numbers["tf32"],
            )
        return Peaks(
            "cuda",
            name,
            bandwidth,
            flops,
            flops,
            bandwidth,
            flops,
            "measured here (card not in CARD_SPECS)",
            threads,
            l2,
        )
    name = f"{cpu_name()}, {os.cpu_count()} logical cores, {threads} torch threads"
    # The floor uses torch's fastest float32 kernel here: the default (MKL) or oneDNN.
    best = (
        max(flops, measure_matmul_flops(device, n=n, onednn=True)) if onednn_is_faster() else flops
    )
    return Peaks(
        "cpu",
        name,
        bandwidth,
        best,
        measure_matmul_flops(device, n=n, dtype=torch.bfloat16),
        bandwidth,
        flops,
        f"measured here: 256 MiB copy, {n}² bfloat16 matmul, {n}² float32 matmul with torch's "
        "default (measured_flops_fp32) and through oneDNN, the faster of the two for floors",
        threads,
        cpu_cache_bytes(),
    )


# ----------------------------------------------------------------------------- floors


@dataclass(frozen=True)
class Floor:
    """``seconds = max(bytes / bandwidth, flops / peak)`` and the counts it came from."""

    seconds: float
    bytes: float
    flops: float
    basis: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def floor(
    peaks: Peaks,
    *,
    bytes_moved: float,
    flops: float,
    dtype: torch.dtype,
    basis: str,
    precision: str = "fp32",
) -> Floor:
    if 0 < bytes_moved <= peaks.cache_bytes:
        # A working set that fits in the last-level cache is not bound by memory bandwidth.
        bytes_moved, basis = 0, f"{basis}; fits in cache: flops only"
    seconds = max(bytes_moved / peaks.bandwidth, flops / peaks.flops(dtype, precision))
    return Floor(seconds, bytes_moved, flops, basis)


def rank_one_apply_floor(peaks: Peaks, d_out: int, d_in: int, dtype: torch.dtype) -> Floor:
    """``W += l rᵀ`` in place: W read once and written once."""
    size = torch.finfo(dtype).bits // 8
    return floor(
        peaks,
        bytes_moved=2 * d_out * d_in * size,
        flops=2 * d_out * d_in,
        dtype=dtype,
        basis="W read + written once (2·d_out·d_in·itemsize bytes)",
    )


def update_factors_floor(peaks: Peaks, d_out: int, d_in: int, dtype: torch.dtype) -> Floor:
    """Factors of one update with the Cholesky factor cached: read W once (W0 k) and L once."""
    size = torch.finfo(dtype).bits // 8
    bytes_moved = (d_out * d_in + d_in * d_in) * size
    flops = 2 * d_out * d_in + 2 * d_in * d_in
    return floor(
        peaks,
        bytes_moved=bytes_moved,
        flops=flops,
        dtype=dtype,
        basis="W0 k (W read once) + two triangular solves (L read once)",
    )


def cholesky_floor(peaks: Peaks, d: int, dtype: torch.dtype) -> Floor:
    """Factor C once: d³/3 flops."""
    size = torch.finfo(dtype).bits // 8
    return floor(
        peaks,
        bytes_moved=2 * d * d * size,
        flops=d**3 / 3,
        dtype=dtype,
        basis="Cholesky d³/3 flops",
    )


def model_dtype(loaded: LoadedModel) -> torch.dtype:
    return next(loaded.model.parameters()).dtype


def unembedding_numel(model: nn.Module) -> int:
    head = getattr(model, "get_output_embeddings")()  # noqa: B009 (mypy: Module attributes)
    assert isinstance(head, nn.Module)
    weight = head.weight
    assert isinstance(weight, torch.Tensor)
    return weight.numel()


def matrix_params(blocks: Sequence[nn.Module]) -> int:
    """Parameters of the matrices in ``blocks`` (2 flops per parameter per token)."""
    return sum(p.numel() for b in blocks for p in b.parameters() if p.ndim >= 2)


def keys_floor(peaks: Peaks, loaded: LoadedModel, layer: int, tokens: int) -> Floor:
    """The keys need blocks 0..layer−1 on every real token of the prompts."""
    blocks = list(loaded.adapter.layers(loaded.model))[:layer]
    return floor(
        peaks,
        bytes_moved=0,
        flops=2.0 * tokens * matrix_params(blocks),
        dtype=model_dtype(loaded),
        basis=f"2·params(blocks<{layer})·{tokens} prompt tokens",
    )


def value_floor(
    peaks: Peaks,
    loaded: LoadedModel,
    layer: int,
    suffix_tokens: int,
    read_positions: int,
    forwards: int,
    backwards: int,
    precision: str = "fp32",
) -> Floor:
    """v* needs, per iteration, the blocks above ``layer`` on the ``suffix_tokens`` δ reaches
    and the loss depends on (nothing before a subject-last token depends on δ, nothing after a
    prompt's last read position is read), except the top block's MLP, which is needed only
    at the positions the loss reads, as is the unembedding; a backward pass (activations
    only) costs as much again. ``precision``: the loop's matmul precision (its peak flop/s)."""
    model = loaded.model
    n_layers = loaded.adapter.n_layers(model)
    blocks = list(loaded.adapter.layers(model))[layer + 1 :]
    top_mlp = [loaded.adapter.mlp(model, n_layers - 1)] if blocks else []
    per_pass = 2.0 * suffix_tokens * (
        matrix_params(blocks) - matrix_params(top_mlp)
    ) + 2.0 * read_positions * (matrix_params(top_mlp) + unembedding_numel(model))
    return floor(
        peaks,
        bytes_moved=0,
        flops=per_pass * (forwards + backwards),
        dtype=model_dtype(loaded),
        precision=precision,
        basis=f"{precision}: ({forwards} fwd + {backwards} bwd) × [2·params(blocks>{layer}, "
        f"top MLP aside)·{suffix_tokens} tokens + 2·(params(top MLP) + V·d)·{read_positions} "
        "read positions]",
    )


def public_targets_floor(
    peaks: Peaks, loaded: LoadedModel, layer: int, tokens: int, forwards: int, backwards: int
) -> Floor:
    """The public ``compute_z`` flow's targets: per iteration every block and the unembedding
    at every real token of the rewriting and essence prompts (it runs the whole prompts and
    takes a log-softmax at every position), and a backward pass (activations only: the
    model's weights need no gradient) through the blocks above ``layer`` and the unembedding
    at every token. Padding is not counted: a floor below the public code's own work."""
    model = loaded.model
    above = list(loaded.adapter.layers(model))[layer + 1 :]
    backward = 2.0 * tokens * (matrix_params(above) + unembedding_numel(model))
    return floor(
        peaks,
        bytes_moved=0,
        flops=forwards * full_forward_flops(loaded, tokens) + backwards * backward,
        dtype=model_dtype(loaded),
        basis=f"{forwards} fwd × 2·(params(all blocks) + V·d)·{tokens} tokens + {backwards} bwd × "
        f"2·(params(blocks>{layer}) + V·d)·{tokens} tokens",
    )


def stats_floor(peaks: Peaks, loaded: LoadedModel, layer: int, tokens: int, d_in: int) -> Floor:
    """Collection needs blocks 0..layer−1 per token and one k kᵀ accumulation (2·d_in² flops)."""
    blocks = list(loaded.adapter.layers(loaded.model))[:layer]
    flops = 2.0 * tokens * (matrix_params(blocks) + d_in * d_in)
    return floor(
        peaks,
        bytes_moved=0,
        flops=flops,
        dtype=torch.float32,
        basis=f"{tokens} tokens × 2·(params(blocks<{layer}) + d_in²)",
    )


def full_forward_flops(loaded: LoadedModel, tokens: int) -> float:
    model = loaded.model
    blocks = list(loaded.adapter.layers(model))
    return 2.0 * tokens * (matrix_params(blocks) + unembedding_numel(model))


def combine(*floors: Floor, basis: str) -> Floor:
    return Floor(
        sum(f.seconds for f in floors),
        sum(f.bytes for f in floors),
        sum(f.flops for f in floors),
        basis,
    )
