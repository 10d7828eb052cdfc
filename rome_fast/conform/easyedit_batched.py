"""EasyEdit's batched editors (MEMIT, EMMET, AlphaEdit; package ``easyeditor``), imported from
the checkout the user names, never copied, and run on our loaded models with everything they
would choose themselves set from outside (``patches``), as ``public_memit`` does for the
original MEMIT code:

* the context templates: the main module's ``CONTEXT_TEMPLATES_CACHE``, as the two groups
  ``[["{}"], [the prefixed templates]]`` (``patches.template_groups``);
* C per edited layer: what its ``get_cov`` reads from ``layer_stats``, with an empty
  ``COV_CACHE`` (keyed by ``config._name_or_path``, it would hand one model's C to another);
* the device: ``hparams.device``, the model's (the code resolves it with
  ``util.device.normalize_device``, which picks CUDA only when given none); the seed;
  ``datasets`` stubbed (imported by its statistics code, which the harness replaces);
* AlphaEdit's module globals ``P``, ``P_loaded``, ``cache_c`` and ``cache_c_new``: as a fresh
  import has them for every edit (``isolate_state``), the projector and the key cache
  ``Kₚ Kₚᵀ`` handed in (``EasyEditInputs.projector``, ``key_cache``) or left to the code and
  captured (``AlphaEditState``); the code runs in a temporary working directory, removed
  after, since it saves its projector there (``AlphaEdit_main.py:75``). Left to the code, the
  key cache an edit starts from is the one the code left after the latest batch this adapter
  applied and has not reverted (zeros when none is applied): a sequential run carries it from
  batch to batch, as the code's own process does, and ``revert`` drops the reverted batch's
  keys, which the code itself never does (docs/results/easyedit-batched.md, finding (c));
* the weights of the edited layers, copied before the call for ``revert`` (EMMET returns none
  unless ``keep_original_weight``, ``emmet_main.py:63``); ``revert`` undoes the latest batch
  not yet reverted.

What the code computed on the way (its keys per layer, its targets z, the outputs it measured
the residual at) is captured as for the original MEMIT code (``patches.capturing``), and the
ΔW it wrote at each layer after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import tempfile
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from rome_fast.conform.patches import (
    Captured,
    captured_stdout,
    capturing,
    injected_layer_statistics,
    isolated_packages,
    module_globals,
    patched,
    stubbed_modules,
    template_groups,
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
from rome_fast.methods.alphaedit.update import AlphaEditHParams
from rome_fast.methods.emmet.update import EmmetHParams
from rome_fast.methods.memit.update import MemitHParams
from rome_fast.model.loader import LoadedModel
from rome_fast.model.weights import stores_transposed
from rome_ref.batched import null_space_projector

PACKAGE = "easyeditor"
ALPHAEDIT_GLOBALS = ("P", "P_loaded", "cache_c", "cache_c_new")  # AlphaEdit_main.py:24-25, 48
P_FILE = "null_space_project.pt"  # the name AlphaEdit_main.py:75 saves its projector under


@dataclass(frozen=True)
class Layout:
    """Where one of EasyEdit's batched editors lives inside ``easyeditor.models``."""

    spec: str
    main: str  # module holding apply_* and the template cache
    apply: str
    execute: str  # the function apply_* calls to compute the deltas
    hparams_module: str
    hparams_class: str
    alg_name: str


LAYOUTS = {
    layout.spec: layout
    for layout in (
        Layout(
            "easyedit-memit",
            "memit.memit_main",
            "apply_memit_to_model",
            "execute_memit",
            "memit.memit_hparams",
            "MEMITHyperParams",
            "MEMIT",
        ),
        Layout(
            "easyedit-emmet",
            "emmet.emmet_main",
            "apply_emmet_to_model",
            "execute_emmet",
            "emmet.emmet_hparams",
            "EMMETHyperParams",
            "EMMET",
        ),
        Layout(
            "easyedit-alphaedit",
            "alphaedit.AlphaEdit_main",
            "apply_AlphaEdit_to_model",
            "execute_AlphaEdit",
            "alphaedit.AlphaEdit_hparams",
            "AlphaEditHyperParams",
            "AlphaEdit",
        ),
    )
}
METHOD_OF = {
    "easyedit-memit": MemitHParams,
    "easyedit-emmet": EmmetHParams,
    "easyedit-alphaedit": AlphaEditHParams,
}


@dataclass(frozen=True)
class EasyEditInputs:
    """Everything the harness controls for one batch edit by one of EasyEdit's editors."""

    loaded: LoadedModel
    requests: Sequence[EditRequest]
    templates: Sequence[str]  # context templates, "{}" first
    C: dict[int, Tensor] = field(repr=False)  # per edited layer: (d_in, d_in) float32
    hparams: HParams  # the target optimization's settings (v_star) and C's (stats)
    method: MemitHParams | EmmetHParams | AlphaEditHParams  # the layers and the method's own
    seed: int
    # AlphaEdit only, per edited layer (d_in, d_in); None: the code computes P from C, and
    # starts Kₚ Kₚᵀ from zeros (an edit independent of any earlier one)
    projector: dict[int, Tensor] | None = field(default=None, repr=False)
    key_cache: dict[int, Tensor] | None = field(default=None, repr=False)


ProjectorSource = Literal["code", "float64"]
PROJECTOR_SOURCES: tuple[ProjectorSource, ...] = get_args(ProjectorSource)


def float64_projectors(inputs: EasyEditInputs) -> dict[int, Tensor]:
    """Per edited layer, AlphaEdit's P from float64 ``eigh`` of the inputs' C (the reference's,
    ``rome_ref.batched.null_space_projector``), stored in float32 as the code's own."""
    assert isinstance(inputs.method, AlphaEditHParams)
    threshold = inputs.method.nullspace_threshold
    return {
        layer: torch.from_numpy(
            null_space_projector(inputs.C[layer].double().cpu().numpy(), threshold)
        ).float()
        for layer in inputs.method.layers
    }


@dataclass
class AlphaEditState:
    """AlphaEdit's module-level state as its solve read it, and the key cache after the edit;
    each (L, d_in, d_in), one slice per edited layer in order."""

    projector: Tensor  # P
    key_cache_before: Tensor  # cache_c = Σ Kₚ Kₚᵀ over earlier edits
    key_cache_after: Tensor  # cache_c plus this batch's K Kᵀ (AlphaEdit_main.py:261-263)


@dataclass
class EasyEditBatched:
    """One of EasyEdit's batched editors (``spec`` a key of ``LAYOUTS``) imported from ``path``.

    ``isolate_state=False`` runs it as in a user's process (EasyEdit's editor calls
    ``apply_*`` again and again): AlphaEdit's module globals are carried from one edit to the
    next, as the code keeps them. ``model_name``: the name AlphaEdit's shape branches read
    (``AlphaEdit_main.py:64-71, 85-88``); None picks one they size right for the model.
    """

    spec: str
    path: Path
    isolate_state: bool = True
    model_name: str | None = None
    # AlphaEdit's P when the inputs hand none in: "code", its own float32 SVD of C
    # (AlphaEdit_main.py:366-370); "float64", the reference's from the same C, so that what P's
    # float32 rounding does (large on SmolLM2's layer 2) is told apart from the rest of the update
    projector_from: ProjectorSource = "code"
    uncontrolled: list[str] = field(default_factory=list)
    stdout: str = ""  # the code's prints during the latest edit
    captured: Captured = field(default_factory=Captured)
    alphaedit: AlphaEditState | None = None  # AlphaEdit's state in the latest edit
    workdir: Path | None = None  # the latest edit's temporary working directory, removed after
    written: list[str] = field(default_factory=list)  # the files the code left in it
    _layout: Layout = field(init=False, repr=False)
    _modules: dict[str, types.ModuleType] = field(default_factory=dict, repr=False)
    # per batch applied and not reverted: its model, the weights before it and (AlphaEdit
    # with isolate_state) the key cache the code left after it
    _applied: list[tuple[nn.Module, dict[str, Tensor], Tensor | None]] = field(
        default_factory=list, repr=False
    )

    def __post_init__(self) -> None:
        if self.spec not in LAYOUTS:
            raise ValueError(f"unknown editor {self.spec!r}; choose one of {', '.join(LAYOUTS)}")
        self._layout = LAYOUTS[self.spec]
        if self.projector_from not in PROJECTOR_SOURCES:
            raise ValueError(
                f"unknown projector source {self.projector_from!r}; choose one of "
                f"{', '.join(PROJECTOR_SOURCES)}"
            )
        if self.projector_from != "code" and self._layout.alg_name != "AlphaEdit":
            raise ValueError(f"{self.spec} has no projector; a projector applies to AlphaEdit")
        self._modules = _import(self._layout, Path(self.path), self.uncontrolled)
        if self._layout.alg_name == "AlphaEdit":
            chosen = self.model_name or "gpt2-xl for a Conv1D weight, llama for a Linear"
            self.uncontrolled.append(
                f"model_name {chosen}: AlphaEdit sizes P and cache_c by the name "
                "(AlphaEdit_main.py:64-71, 85-88), not by the model"
            )
        if not self.isolate_state:
            self.uncontrolled.append(
                "module globals kept across edits (isolate_state=False): AlphaEdit's P and "
                "cache_c carry over, as in a user's process"
            )

    @property
    def name(self) -> str:
        return self.spec

    @property
    def main(self) -> types.ModuleType:
        """The code's main module as this adapter imported it: its globals are the code's
        state (AlphaEdit's ``P`` and ``cache_c``)."""
        return self._modules["main"]

    def hparams(self, inputs: EasyEditInputs, workdir: Path) -> Any:
        """The code's own hyperparameter dataclass, filled from the harness's inputs."""
        values = {
            **shared_fields(inputs.loaded, inputs.hparams),
            **dataclasses.asdict(inputs.method),
            "layers": list(inputs.method.layers),
            "layer_selection": "all",
            "alg_name": self._layout.alg_name,
            "device": str(inputs.loaded.device),
            "model_name": self._model_name(inputs),
            "stats_dir": "unused: the harness injects C",
            "P_loc": str(workdir / P_FILE),
        }
        # AlphaEdit's dataclass requires mom2_update_weight, which its solve never reads
        values.setdefault("mom2_update_weight", 0.0)
        cls = getattr(self._modules["hparams"], self._layout.hparams_class)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def edit(self, inputs: EasyEditInputs) -> None:
        """Apply the batch in place; ``revert`` undoes it."""
        self._check(inputs)
        loaded, main = inputs.loaded, self.main
        apply = getattr(main, self._layout.apply)
        self.captured, self.alphaedit = Captured(), None
        torch.manual_seed(inputs.seed)
        with contextlib.ExitStack() as stack:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            stack.callback(self._note_written, workdir)
            stack.enter_context(working_directory(workdir))
            hparams = self.hparams(inputs, workdir)
            C_by_module = {
                hparams.rewrite_module_tmp.format(layer): C.to(loaded.device, torch.float32)
                for layer, C in inputs.C.items()
            }
            stack.enter_context(
                patched(main, CONTEXT_TEMPLATES_CACHE=template_groups(inputs.templates))
            )
            stack.enter_context(injected_layer_statistics(main, C_by_module))
            stack.enter_context(capturing(main, self.captured))
            if self._layout.alg_name == "AlphaEdit":
                stack.enter_context(self._alphaedit_state(main, inputs, workdir))
            saved = _copies(loaded.model, hparams)
            out = stack.enter_context(captured_stdout())
            apply(loaded.model, loaded.tokenizer, _requests(inputs.requests), hparams)
        self.stdout = out.getvalue()
        self.captured.deltas = {
            layer: weight_change(loaded, saved, layer) for layer in inputs.method.layers
        }
        self._applied.append((loaded.model, saved, self._key_cache_left()))

    def _note_written(self, workdir: Path) -> None:
        self.workdir, self.written = workdir, sorted(p.name for p in workdir.iterdir())

    def revert(self) -> None:
        """Write back the edited layers' weights as they were before the latest edit not yet
        reverted (and drop the key cache it left)."""
        model, saved, _ = self._applied.pop() if self._applied else (None, {}, None)
        write_back(model, saved)

    def _key_cache_left(self) -> Tensor | None:
        """The key cache the latest edit left, where this adapter carries it."""
        state = self.alphaedit
        return state.key_cache_after if state is not None and self.isolate_state else None

    def carried_key_cache(self) -> Tensor | None:
        """AlphaEdit's key cache (L, d_in, d_in) after the latest batch applied and not reverted
        (None: none applied, or ``isolate_state`` off: the code's own global carries it)."""
        return self._applied[-1][2] if self._applied else None

    def _check(self, inputs: EasyEditInputs) -> None:
        expected = METHOD_OF[self.spec]
        if not isinstance(inputs.method, expected):
            raise ValueError(
                f"{self.spec} takes {expected.__name__}, not {type(inputs.method).__name__}; "
                "pass the method's own hyperparameters"
            )
        refuse_braced(inputs.templates)
        missing = sorted(set(inputs.method.layers) - set(inputs.C))
        if missing:
            raise ValueError(f"no C for edited layers {missing}; pass one per layer in C")
        handed = [name for name in ("projector", "key_cache") if getattr(inputs, name) is not None]
        if handed and self._layout.alg_name != "AlphaEdit":
            raise ValueError(f"{self.spec} keeps no {' or '.join(handed)}; pass them to AlphaEdit")

    def _model_name(self, inputs: EasyEditInputs) -> str:
        """``model_name`` for the code: AlphaEdit sizes P and cache_c by it (``gpt2-xl``: from
        the weight's first dimension, GPT-2's Conv1D d_in; ``llama``: its second, a Linear's)."""
        if self._layout.alg_name != "AlphaEdit":
            return inputs.loaded.name
        if self.model_name is not None:
            return self.model_name
        module = inputs.loaded.adapter.edited_module(inputs.loaded.model, inputs.method.layers[0])
        return "gpt2-xl" if stores_transposed(module) else "llama"

    @contextlib.contextmanager
    def _alphaedit_state(
        self, main: types.ModuleType, inputs: EasyEditInputs, workdir: Path
    ) -> Iterator[None]:
        """AlphaEdit's globals for one edit (fresh unless ``isolate_state`` is off; P and
        cache_c as handed in), and what its solve read of them recorded in ``alphaedit``."""
        layers = inputs.method.layers
        given: dict[str, Any] = {}
        projector = inputs.projector
        if projector is None and self.projector_from == "float64":
            projector = float64_projectors(inputs)
        if projector is not None:  # the code loads it from P_loc itself
            torch.save(torch.stack([projector[layer] for layer in layers]), workdir / P_FILE)
            given["P_loaded"] = False
        carried = self.carried_key_cache()
        if inputs.key_cache is not None:
            given |= {
                "cache_c": torch.stack([inputs.key_cache[layer] for layer in layers]),
                "cache_c_new": True,
            }
        elif carried is not None:  # a copy: the code adds to cache_c in place (:261-263)
            given |= {"cache_c": carried.clone(), "cache_c_new": True}
        fresh = {"P_loaded": False, "cache_c_new": False} if self.isolate_state else {}
        state = module_globals(main, ALPHAEDIT_GLOBALS if self.isolate_state else (), **fresh)
        read: dict[str, Tensor] = {}
        with state, patched(main, **given), self._recording_state(main, read):
            yield
            self.alphaedit = AlphaEditState(read["P"], read["cache_c"], main.cache_c.clone())

    def _recording_state(
        self, main: types.ModuleType, read: dict[str, Tensor]
    ) -> contextlib.AbstractContextManager[None]:
        """``execute_AlphaEdit`` wrapped: P and cache_c copied into ``read`` as its solve
        reads them (``apply_AlphaEdit_to_model`` has set them up by then)."""
        execute: Callable[..., Any] = getattr(main, self._layout.execute)

        def recorded(*args: Any, **kwargs: Any) -> Any:
            # a cache_c the code never set is left for it to fail on by name (AlphaEdit_main.py:233)
            read.update(
                {name: vars(main)[name].clone() for name in ("P", "cache_c") if name in vars(main)}
            )
            return execute(*args, **kwargs)

        return patched(main, **{self._layout.execute: recorded})


def _copies(model: nn.Module, hparams: Any) -> dict[str, Tensor]:
    """The weights the code will edit, copied before it does (``revert`` writes them back)."""
    names = [f"{hparams.rewrite_module_tmp.format(layer)}.weight" for layer in hparams.layers]
    return {name: model.get_parameter(name).detach().clone() for name in names}


def _requests(requests: Sequence[EditRequest]) -> list[dict[str, Any]]:
    """The requests in EasyEdit's own form (targets as plain strings)."""
    return [
        {
            "case_id": r.case_id if r.case_id is not None else i,
            "prompt": r.prompt,
            "subject": r.subject,
            "target_new": r.target_new,
            "ground_truth": r.target_true,
        }
        for i, r in enumerate(requests)
    ]


def _import(layout: Layout, path: Path, uncontrolled: list[str]) -> dict[str, types.ModuleType]:
    """The layout's main and hparams modules from ``path``, in a package of their own: each
    adapter holds its own module globals (AlphaEdit's P and cache_c), and whatever held
    ``easyeditor`` before (the ROME adapters' import) holds it after."""
    if not path.is_dir():
        raise ValueError(f"--editor-path {path} is not a folder; pass the EasyEdit checkout")
    with contextlib.ExitStack() as stack:
        stack.enter_context(importable_from(path))
        stack.enter_context(isolated_packages(PACKAGE))
        stubs = stack.enter_context(stubbed_modules(*IMPORT_ONLY))
        try:
            modules = {
                "main": importlib.import_module(f"{PACKAGE}.models.{layout.main}"),
                "hparams": importlib.import_module(f"{PACKAGE}.models.{layout.hparams_module}"),
            }
        except (ImportError, OSError) as error:
            raise ValueError(
                f"cannot import {layout.spec} from {path}: {error}; pass the EasyEdit checkout "
                "(the folder holding easyeditor/) with --editor-path"
            ) from error
    uncontrolled.extend(f"module {name} stubbed for import only (not installed)" for name in stubs)
    return modules
