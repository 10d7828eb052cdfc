"""The original MEMIT code (``memit.apply_memit_to_model``), imported from the checkout the user
names, never copied, and run on our loaded models with everything it would choose itself set
from outside (``patches``), as ``public`` does for ROME:

* the context templates: its module-global ``CONTEXT_TEMPLATES_CACHE``, as its two groups
  ``[["{}"], [the prefixed templates]]`` (``compute_ks`` averages within, then across, groups);
* C per edited layer: what its ``get_cov`` reads from ``layer_stats``, with an empty
  ``COV_CACHE``;
* hard-coded ``"cuda"`` tensors sent to the model's device, the seed, ``datasets`` stubbed
  (imported by its statistics code, which the harness replaces);
* its module names: the hparams' templates come from our adapter (GPT-2/GPT-J layouts; the
  code reads ``config.n_embd``);
* the blocks' outputs shown to its hooks as the 1-tuples of transformers 4, which it indexes
  with ``[0]`` (``patches.tuple_block_outputs``).

Its packages (``memit``, ``rome``, ``util``) are imported in isolation, since the paper's
ROME checkout ships other packages under the same names. What it computed on the way (the keys
``compute_ks`` returned per layer, the targets z, the outputs it measured the residual at) is
captured by wrapping those functions where ``memit_main`` calls them: see ``Captured``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rome_fast.conform.patches import (
    Captured,
    captured_stdout,
    capturing,
    cuda_calls_to,
    injected_layer_statistics,
    isolated_packages,
    patched,
    stubbed_modules,
    template_groups,
    tuple_block_outputs,
    working_directory,
)
from rome_fast.conform.protocol import importable_from
from rome_fast.conform.public import (
    IMPORT_ONLY,
    refuse_braced,
    shared_fields,
    weight_change,
    write_back,
)
from rome_fast.edit.request import EditRequest
from rome_fast.hparams.defaults import HParams
from rome_fast.methods.memit.update import MemitHParams
from rome_fast.model.loader import LoadedModel

PACKAGES = ("memit", "rome", "util")  # top-level packages of the MEMIT checkout


@dataclass(frozen=True)
class MemitInputs:
    """Everything the harness controls for one batch edit by the public MEMIT code."""

    loaded: LoadedModel
    requests: Sequence[EditRequest]
    templates: Sequence[str]  # context templates, "{}" first
    C: dict[int, Tensor] = field(repr=False)  # per edited layer: (d_in, d_in) float32
    hparams: HParams  # the target optimization's settings (v_star) and C's (stats)
    method: MemitHParams  # the edited layers and λ
    seed: int


@dataclass
class PublicMemit:
    """The original MEMIT code imported from ``path`` and driven through its entry point."""

    path: Path
    uncontrolled: list[str] = field(default_factory=list)
    stdout: str = ""  # the code's prints during the latest edit
    captured: Captured = field(default_factory=Captured)
    _modules: dict[str, types.ModuleType] = field(default_factory=dict, repr=False)
    # (model, the weights before) of each edit applied and not reverted, the latest last: a
    # sequential run reverts its batches in reverse order
    _applied: list[tuple[nn.Module, dict[str, Tensor]]] = field(default_factory=list, repr=False)

    name = "memit"

    def __post_init__(self) -> None:
        self._modules = _import(Path(self.path), self.uncontrolled)

    def hparams(self, inputs: MemitInputs) -> Any:
        """The code's ``MEMITHyperParams``, filled from the harness's inputs."""
        values = {
            **shared_fields(inputs.loaded, inputs.hparams),
            "layers": list(inputs.method.layers),
            "layer_selection": "all",
            "mom2_update_weight": inputs.method.mom2_update_weight,
        }
        cls = self._modules["hparams"].MEMITHyperParams
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})

    def edit(self, inputs: MemitInputs) -> None:
        """Apply the batch in place; ``revert`` undoes it."""
        loaded, main = inputs.loaded, self._modules["main"]
        if not hasattr(loaded.model.config, "n_embd"):
            raise ValueError(
                f"the public MEMIT code reads config.n_embd, which {loaded.name} "
                f"({loaded.adapter.family}) lacks: it runs GPT-2 and GPT-J layouts only; pass "
                "such a model (random:tiny-gpt2, random:gpt2-medium, ...)"
            )
        refuse_braced(inputs.templates)
        missing = sorted(set(inputs.method.layers) - set(inputs.C))
        if missing:
            raise ValueError(f"no C for edited layers {missing}; pass one per layer in C")
        hparams = self.hparams(inputs)
        C_by_module = {
            hparams.rewrite_module_tmp.format(layer): C.to(loaded.device, torch.float32)
            for layer, C in inputs.C.items()
        }
        self.captured = Captured()
        torch.manual_seed(inputs.seed)
        with contextlib.ExitStack() as stack:
            stack.enter_context(
                patched(main, CONTEXT_TEMPLATES_CACHE=template_groups(inputs.templates))
            )
            stack.enter_context(injected_layer_statistics(main, C_by_module))
            stack.enter_context(capturing(main, self.captured))
            stack.enter_context(tuple_block_outputs(loaded.adapter.layers(loaded.model)))
            stack.enter_context(cuda_calls_to(loaded.device))
            out = stack.enter_context(captured_stdout())
            _, saved = main.apply_memit_to_model(
                loaded.model,
                loaded.tokenizer,
                [_request(r, i) for i, r in enumerate(inputs.requests)],
                hparams,
                return_orig_weights=True,
            )
        self.stdout = out.getvalue()
        self.captured.deltas = {
            layer: weight_change(loaded, saved, layer) for layer in inputs.method.layers
        }
        self._applied.append((loaded.model, dict(saved)))

    def revert(self) -> None:
        """Write back the weights the code returned (``return_orig_weights``) for the latest
        edit not yet reverted."""
        model, saved = self._applied.pop() if self._applied else (None, {})
        write_back(model, saved)


def _request(request: EditRequest, index: int) -> dict[str, Any]:
    """One request in the code's own form (targets as ``{"str": ...}``)."""
    return {
        "case_id": request.case_id if request.case_id is not None else index,
        "prompt": request.prompt,
        "subject": request.subject,
        "target_new": {"str": request.target_new},
        "target_true": {"str": request.target_true},
    }


def _import(path: Path, uncontrolled: list[str]) -> dict[str, types.ModuleType]:
    """``memit.memit_main`` and ``memit.memit_hparams`` from ``path``, imported as the code
    expects to be run (its ``util/globals.py`` reads ``globals.yml`` from the working
    directory)."""
    if not path.is_dir():
        raise ValueError(f"--editor-path {path} is not a folder; pass the MEMIT checkout")
    with contextlib.ExitStack() as stack:
        stack.enter_context(importable_from(path))
        stack.enter_context(working_directory(path))
        stack.enter_context(isolated_packages(*PACKAGES))
        stubs = stack.enter_context(stubbed_modules(*IMPORT_ONLY))
        try:
            modules = {
                "main": importlib.import_module("memit.memit_main"),
                "hparams": importlib.import_module("memit.memit_hparams"),
            }
        except (ImportError, OSError) as error:
            raise ValueError(
                f"cannot import the MEMIT code from {path}: {error}; pass its checkout (the "
                "folder holding memit/, rome/ and util/) with --editor-path"
            ) from error
    uncontrolled.extend(f"module {name} stubbed for import only (not installed)" for name in stubs)
    return modules
