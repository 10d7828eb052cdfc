"""The public r-ROME code (``../shared/anchors/rebuilding-rome``) run on the CPU, patched from
outside only: its ``compute_v`` module sees a ``torch`` whose ``device="cuda"`` arguments are
dropped and a tokenizer whose batches ignore ``.to("cuda")``; its Adam is recorded so that the
test can read δ and the step count. The statistics module imports ``datasets``, which is only
needed to collect statistics (not done here): a stand-in is provided when it is missing; its
settings module reads ``globals.yml`` from the working directory, so the import runs there.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import torch
from transformers import BatchEncoding

from tests.anchors import checkout


class RecordedAdam(torch.optim.Adam):
    """Adam that remembers its instances (the public loop's δ is its only parameter)."""

    instances: ClassVar[list[RecordedAdam]] = []

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.steps = 0
        RecordedAdam.instances.append(self)

    def step(self, closure: Any = None) -> Any:
        self.steps += 1
        return super().step(closure)


class CpuTorch(ModuleType):
    """``torch`` for the public module: ``device=`` dropped, ``optim.Adam`` recorded."""

    def __init__(self) -> None:
        super().__init__("torch")
        self.optim = ModuleType("torch.optim")
        self.optim.Adam = RecordedAdam  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def tensor(*args: Any, device: Any = None, **kwargs: Any) -> torch.Tensor:  # noqa: ARG004  (dropped)
        return torch.tensor(*args, **kwargs)

    @staticmethod
    def zeros(*args: Any, device: Any = None, **kwargs: Any) -> torch.Tensor:  # noqa: ARG004  (dropped)
        return torch.zeros(*args, **kwargs)


class CpuEncoding(BatchEncoding):
    def to(self, _device: Any, **_kwargs: Any) -> CpuEncoding:  # type: ignore[override]
        return self


class CpuTokenizer:
    """The tokenizer, with its batches kept on the CPU."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, *args: Any, **kwargs: Any) -> CpuEncoding:
        batch = self.tokenizer(*args, **kwargs)
        # the encodings too: the public code slices batches and counts tokens per sequence
        return CpuEncoding(batch.data, encoding=batch.encodings)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


@contextmanager
def public_compute_v() -> Iterator[ModuleType]:
    """``rome.compute_v`` of the public code, CPU-patched; every module it imported and the
    path entry are removed on exit."""
    anchor = checkout("rebuilding-rome")
    before = set(sys.modules)
    sys.path.insert(0, str(anchor))
    if importlib.util.find_spec("datasets") is None:
        stand_in = ModuleType("datasets")
        stand_in.load_dataset = None  # type: ignore[attr-defined]
        sys.modules["datasets"] = stand_in
    RecordedAdam.instances.clear()
    cwd = Path.cwd()
    try:
        os.chdir(anchor)  # util/globals.py reads globals.yml from the working directory
        try:
            module = importlib.import_module("rome.compute_v")
        finally:
            os.chdir(cwd)
        module.torch = CpuTorch()  # type: ignore[attr-defined]
        yield module
    finally:
        sys.path.remove(str(anchor))
        for name in set(sys.modules) - before:
            del sys.modules[name]
