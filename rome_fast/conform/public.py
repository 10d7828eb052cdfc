"""Adapters for public ROME code, imported from a checkout the user names, never copied.

* ``rebuilding-rome``: the paper's code layout (``rome.rome_main.apply_rome_to_model`` and
  the ``rome.rome_hparams.ROMEHyperParams`` dataclass), for kmeng01/rome checkouts (no key
  flags: always the original update) and rebuilding-rome ones, whose three flags pick the
  variant (read from ``rome/compute_u.py`` and ``rome/compute_v.py``; ``apply_rome_to_model``
  asserts ``enable_prompt_keys != enable_random_prefix_keys``):

  ======  =========================  ===========================  ======================
  config  original_implementation    enable_random_prefix_keys    enable_prompt_keys
  ======  =========================  ===========================  ======================
  rome    True  (u from k*)          False (value at the prompt)  True
  r-rome  False                      True  (k*, value at k*)      False
  p-rome  False                      False                        True  (k_prompt only)
  ======  =========================  ===========================  ======================

* ``easyedit-rome`` / ``easyedit-r-rome``: EasyEdit's ``apply_rome_to_model`` and
  ``apply_r_rome_to_model`` (package ``easyeditor``); R-ROME's hparams carry the same flags.

What the adapters set from outside (see ``patches``): the context templates (the module-global
cache), C (the statistics ``get_inv_cov`` inverts), the device of hard-coded ``"cuda"``
tensors, the seed, and stand-ins for ``datasets`` when it is missing (imported by the
statistics code the harness replaces). The hyperparameters are the harness's, with
``mom2_adjustment=True`` (EasyEdit's shipped yaml files switch C off).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from rome_fast.conform.patches import (
    captured_stdout,
    cuda_calls_to,
    injected_statistics,
    injected_templates,
    stubbed_modules,
    working_directory,
)
from rome_fast.conform.protocol import ConformInputs, importable_from
from rome_fast.hparams.defaults import HParams
from rome_fast.model.loader import LoadedModel
from rome_fast.model.weights import stores_transposed, weight_matrix

KEY_FLAGS = ("original_implementation", "enable_random_prefix_keys", "enable_prompt_keys")
FLAGS: dict[str, tuple[bool, bool, bool]] = {
    "rome": (True, False, True),
    "r-rome": (False, True, False),
    "p-rome": (False, False, True),
}
IMPORT_ONLY = ("datasets",)  # imported at module level by the statistics code, never called


@dataclass(frozen=True)
class Layout:
    """Where one public editor's pieces live inside its checkout."""

    spec: str
    package: str  # holds rome_main/compute_u, e.g. "rome" or "easyeditor.models.rome"
    main: str  # module name inside the package holding apply_* and the template cache
    apply: str
    hparams_class: str
    hparams_module: str
    target_as_dict: bool  # the paper's code wants {"str": ...}, EasyEdit a plain string
    default_config: str


LAYOUTS = {
    "rebuilding-rome": Layout(
        "rebuilding-rome",
        "rome",
        "rome_main",
        "apply_rome_to_model",
        "ROMEHyperParams",
        "rome_hparams",
        True,
        "rome",
    ),
    "easyedit-rome": Layout(
        "easyedit-rome",
        "easyeditor.models.rome",
        "rome_main",
        "apply_rome_to_model",
        "ROMEHyperParams",
        "rome_hparams",
        False,
        "rome",
    ),
    "easyedit-r-rome": Layout(
        "easyedit-r-rome",
        "easyeditor.models.r_rome",
        "r_rome_main",
        "apply_r_rome_to_model",
        "R_ROMEHyperParams",
        "r_rome_hparams",
        False,
        "r-rome",
    ),
}


@dataclass
class PublicEditor:
    """One public ROME editor imported from ``path`` and driven through its own entry point."""

    layout: Layout
    path: Path
    config: str | None = None
    uncontrolled: list[str] = field(default_factory=list)
    stdout: str = ""  # the code's prints during the latest edit
    _modules: dict[str, types.ModuleType] = field(default_factory=dict, repr=False)
    _saved: dict[str, Tensor] = field(default_factory=dict, repr=False)
    _model: nn.Module | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._modules = _import(self.layout, self.path, self.uncontrolled)
        hp_class = self._hparams_class
        has_flags = all(f in {x.name for x in dataclasses.fields(hp_class)} for f in KEY_FLAGS)
        if self.config is None:
            self.config = self.layout.default_config
        if self.config not in FLAGS:
            raise ValueError(
                f"unknown --variant {self.config!r} for {self.layout.spec}; choose one of "
                f"{', '.join(FLAGS)}"
            )
        if not has_flags and self.config != "rome":
            raise ValueError(
                f"{self.layout.spec} at {self.path} has no key flags ({', '.join(KEY_FLAGS)}): "
                "it only runs the original update; use --config rome"
            )
        self._flags = dict(zip(KEY_FLAGS, FLAGS[self.config], strict=True)) if has_flags else {}

    @property
    def name(self) -> str:
        return f"{self.layout.spec}[{self.config}]"

    def module(self, name: str) -> types.ModuleType:
        """One of the code's modules (``compute_u``, ``repr_tools``, ...), already imported."""
        return importlib.import_module(f"{self.layout.package}.{name}")

    @property
    def _hparams_class(self) -> type:
        cls: type = getattr(self._modules["hparams"], self.layout.hparams_class)
        return cls

    def hparams(self, inputs: ConformInputs) -> Any:
        """The code's own hyperparameter dataclass, filled from the harness's inputs."""
        loaded, hp = inputs.loaded, inputs.hparams
        values: dict[str, Any] = {
            "layers": [inputs.layer],
            **shared_fields(loaded, hp),
            "context_template_length_params": [
                list(p) for p in hp.v_star.context_template_schedule
            ],
            "alg_name": "R-ROME" if "r_rome" in self.layout.package else "ROME",
            "device": str(loaded.device),
            "model_name": loaded.name,
            "stats_dir": "unused: the harness injects C",
            **self._flags,
        }
        names = {f.name for f in dataclasses.fields(self._hparams_class)}
        return self._hparams_class(**{k: v for k, v in values.items() if k in names})

    def request(self, inputs: ConformInputs) -> dict[str, Any]:
        r = inputs.request
        new: Any = {"str": r.target_new} if self.layout.target_as_dict else r.target_new
        true: Any = {"str": r.target_true} if self.layout.target_as_dict else r.target_true
        return {
            "prompt": r.prompt,
            "subject": r.subject,
            "target_new": new,
            "ground_truth": true,
            "target_true": true,
        }

    def edit(self, inputs: ConformInputs) -> None:
        refuse_braced(inputs.templates)
        loaded = inputs.loaded
        apply = getattr(self._modules["main"], self.layout.apply)
        C = inputs.C.to(device=loaded.device, dtype=torch.float32)
        torch.manual_seed(inputs.seed)
        with contextlib.ExitStack() as stack:
            stack.enter_context(injected_templates(self._modules["main"], inputs.templates))
            stack.enter_context(injected_statistics(self._modules["compute_u"], C))
            stack.enter_context(cuda_calls_to(loaded.device))
            out = stack.enter_context(captured_stdout())
            _, saved = apply(
                loaded.model,
                loaded.tokenizer,
                [self.request(inputs)],
                self.hparams(inputs),
                return_orig_weights=True,
            )
        self.stdout = out.getvalue()
        self._model, self._saved = loaded.model, dict(saved)

    def revert(self) -> None:
        """Write back the original weights the code returned (``return_orig_weights``)."""
        write_back(self._model, self._saved)
        self._model, self._saved = None, {}


def refuse_braced(templates: Sequence[str]) -> None:
    """ValueError for templates with escaped braces, which the public codes cannot format."""
    braced = [t for t in templates if "{{" in t or "}}" in t]
    if braced:
        raise ValueError(
            f"templates {braced} hold escaped braces: the public code formats each template "
            "twice (template, then subject), which fails on them; pass templates without "
            "braces (rome conform strips them from generated templates)"
        )


def write_back(model: nn.Module | None, saved: dict[str, Tensor]) -> None:
    """Write back the original weights a public code returned (``return_orig_weights``)."""
    if model is None:
        raise ValueError("nothing to revert: no edit was made")
    with torch.no_grad():
        for name, weight in saved.items():
            model.get_parameter(name)[...] = weight


def weight_change(loaded: LoadedModel, before: dict[str, Tensor], layer: int) -> Tensor:
    """``W1 − W0`` at ``layer``'s edited module, (d_out, d_in) float64 (exact: both float32);
    ``before`` holds W0 under the parameter's name, as a public code returns it."""
    module = loaded.adapter.edited_module(loaded.model, layer)
    name = loaded.adapter.edited_site(loaded.model, layer).module_name
    stored = before[f"{name}.weight"]
    W0 = stored.T if stores_transposed(module) else stored
    return weight_matrix(module).detach().double() - W0.double()


def shared_fields(loaded: LoadedModel, hp: HParams) -> dict[str, Any]:
    """The hyperparameter fields the public ROME and MEMIT dataclasses share, from the harness's
    settings: the target optimization, C's collection, and the module name templates (the
    code formats ``layer`` into them), which come from the model's adapter."""
    adapter = loaded.adapter
    block = f"{adapter.layers_path}.{{}}"
    return {
        "fact_token": "subject_last",
        "v_num_grad_steps": hp.v_star.num_grad_steps,
        "v_lr": hp.v_star.lr,
        "v_loss_layer": adapter.n_layers(loaded.model) - 1,
        "v_weight_decay": hp.v_star.weight_decay,
        "clamp_norm_factor": hp.v_star.clamp_norm_factor,
        "kl_factor": hp.v_star.kl_factor,
        "mom2_adjustment": True,
        "rewrite_module_tmp": f"{block}.{adapter.mlp_name}.{adapter.proj_name}",
        "layer_module_tmp": block,
        "mlp_module_tmp": f"{block}.{adapter.mlp_name}",
        "attn_module_tmp": f"{block}.attn",
        "ln_f_module": adapter.final_norm_path,
        "lm_head_module": _output_embedding(loaded.model),
        "mom2_dataset": hp.stats.corpus,
        "mom2_n_samples": hp.stats.n_samples,
        "mom2_dtype": hp.stats.dtype,
    }


def _output_embedding(model: nn.Module) -> str:
    """The module name under which ``named_parameters`` lists the unembedding's weight: the
    code looks ``lm_head.weight`` up there, which a tied model lists as the input embedding's
    (GPT-2: ``transformer.wte``)."""
    unembedding = cast(PreTrainedModel, model).get_output_embeddings()
    assert isinstance(unembedding, nn.Module)
    weight = unembedding.weight
    name = next(n for n, p in model.named_parameters() if p is weight)
    return name.removesuffix(".weight")


def _import(layout: Layout, path: Path, uncontrolled: list[str]) -> dict[str, types.ModuleType]:
    """The layout's modules, imported from ``path`` as the code expects to be run."""
    if not Path(path).is_dir():
        raise ValueError(f"--editor-path {path} is not a folder; pass the checkout of the code")
    with importable_from(path), working_directory(path), stubbed_modules(*IMPORT_ONLY) as stubs:
        try:
            modules = {
                "main": importlib.import_module(f"{layout.package}.{layout.main}"),
                "compute_u": importlib.import_module(f"{layout.package}.compute_u"),
                "hparams": importlib.import_module(f"{layout.package}.{layout.hparams_module}"),
            }
        except (ImportError, OSError) as error:
            raise ValueError(
                f"cannot import {layout.spec} from {path}: {error}; pass its checkout with "
                "--editor-path (or set ROME_EDITOR_PATH)"
            ) from error
    uncontrolled.extend(f"module {name} stubbed for import only (not installed)" for name in stubs)
    return modules
