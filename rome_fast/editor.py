"""The editor: atomic rank-one edits of a loaded model, exact reverts, and an edit log.

One edit runs five phases, each timed: context templates (generated once per editor,
seeded), target value ``v*``, keys ``k*``/``k_prompt`` (read in the v* pass), the rank-one
update (covariance factor cached per layer), and applying it. Nothing touches the model
before the apply phase, and a failure during it (or non-finite weights after it) restores
the saved pre-edit weight, so a failed edit leaves every weight bit-identical.

Exactness of undo:

* ``revert`` of the most recent edit copies back the weight saved just before it;
* ``revert`` of an older edit rebuilds that weight from W0 by re-applying the remaining
  edits of the same module in order, which is bit-identical to never having applied it
  (the later edits keep the factors they were computed with);
* ``restore`` copies back W0 of every touched weight.

Another writer: the editor notes each weight it writes (the tensor's version counter and a
checksum of its bytes). ``revert`` and ``restore`` refuse with ``ForeignWriteError`` when a
weight has changed since the editor's last write to it (a second editor on the same model,
or code writing the weight), because copying back would silently discard that change:
undo the other writer's edits first (the last edit first), then this editor's. A new edit
stacks on whatever the weight holds and counts as this editor's write.

Memory: one copy of each touched weight (W0) plus one pre-edit copy of the latest edit's
weight; never a copy of the whole model.

The log (``save_log``) holds the factors exactly as applied (safetensors) and everything
else as JSON; ``replay_log`` on a fresh copy of the model applies them in the same order,
dtype and code path, giving bit-identical weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import unicodedata
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from rome_fast.context import check_fits
from rome_fast.corpus import Corpus
from rome_fast.hparams import HParams, hparams_for
from rome_fast.keys import Keys
from rome_fast.models import LoadedModel
from rome_fast.precision import check_precision
from rome_fast.templates import generate_context_templates
from rome_fast.tokens import split_prompt
from rome_fast.update import CovarianceFactor, RankOne, Variant, rank_one_factors
from rome_fast.value import compute_v_star, target_token_ids
from rome_fast.variants import RegisteredVariant, resolve_variant
from rome_fast.weights import apply_rank_one, module_bias, weight_matrix

LOG_FORMAT = "rome-verify-edit-log"
LOG_VERSION = 1
LOG_JSON = "edits.json"
LOG_TENSORS = "factors.safetensors"

Covariance = Tensor | CovarianceFactor
CovarianceProvider = Callable[[LoadedModel, int], Covariance]


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: ``prompt`` holds ``{}`` where ``subject`` goes."""

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    case_id: str | int | None = None

    def __post_init__(self) -> None:
        split_prompt(self.prompt)  # exactly one "{}" slot
        if not _visible(self.subject):
            raise ValueError(
                f"the subject must hold a visible character, got {self.subject!r}; "
                "pass the subject as it appears in the prompt"
            )
        if not _visible(self.target_new):
            raise ValueError(f"target_new must hold a visible character, got {self.target_new!r}")
        if self.target_true is not None and self.target_new.strip() == self.target_true.strip():
            warnings.warn(
                f"the new target {self.target_new!r} equals the true one: the edit only "
                "reinforces what the model should already say",
                UserWarning,
                stacklevel=3,
            )


def _visible(text: str) -> bool:
    """Holds a character that is not whitespace, a control or a format (zero-width) one."""
    return any(not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf") for c in text)


@dataclass(frozen=True)
class EditResult:
    """What one edit did. ``ΔW = outer(left, right)`` on ``module_name``'s (d_out, d_in) weight.

    ``left``/``right`` are CPU tensors in the update's accumulation dtype (float32, or float64
    for a float64 model), exactly as applied. Residuals are relative, ``‖Ŵk + b − v*‖ / ‖v*‖``,
    read from the edited module's output after the update.
    """

    request: EditRequest
    variant: str
    layer: int
    module_name: str
    left: Tensor  # (d_out,)
    right: Tensor  # (d_in,)
    denominator: float
    delta_norm: float  # ‖ΔW‖_F / numel(W)
    relative_residual_k_star: float
    relative_residual_k_prompt: float
    key_cosine: float
    loss_trace: list[float]
    timings: dict[str, float]
    templates: list[str]
    seed: int
    edit_seconds: float
    k_star: Tensor = field(repr=False)  # (d_in,) float32
    k_prompt: Tensor = field(repr=False)  # (d_in,) float32
    v_star: Tensor = field(repr=False)  # (d_out,) float32, desired module output
    adam_steps: int = 0
    # Per v* iteration (rome_fast.value.LOSS_PARTS): nll, kl, weight_decay (each as it enters
    # the total), total, and ‖δ‖ where the loss was evaluated.
    loss_steps: list[dict[str, float]] = field(default_factory=list)

    @property
    def rank_one(self) -> RankOne:
        return RankOne(self.left, self.right, torch.tensor(self.denominator, dtype=self.left.dtype))


class KeysLike(Protocol):
    """What an edit needs of the keys (fast ``keys.Keys`` or the naive ones)."""

    @property
    def k_star(self) -> Tensor: ...  # (d_in,)

    @property
    def k_prompt(self) -> Tensor: ...  # (d_in,)


class ValueLike(Protocol):
    """What an edit needs of the target value."""

    @property
    def v_star(self) -> Tensor: ...  # (d_out,) desired module output

    @property
    def loss_trace(self) -> list[float]: ...

    @property
    def loss_steps(self) -> list[dict[str, float]]: ...


@dataclass(frozen=True)
class PreparedEdit:
    """The variant-independent part of an edit (see ``Editor.prepare``)."""

    request: EditRequest
    layer: int
    templates: list[str]
    keys: KeysLike
    value: ValueLike
    timings: dict[str, float]
    seconds: float
    state: tuple[EditResult, ...] = field(repr=False, compare=False)  # the edits applied then


class DisablingEditError(ValueError):
    """A guard refused an edit; the model was not touched."""

    def __init__(self, reasons: list[str], denominator: float, delta_norm: float) -> None:
        self.reasons = reasons
        self.denominator = denominator
        self.delta_norm = delta_norm
        super().__init__("refused a disabling edit (model unchanged): " + "; ".join(reasons))


@dataclass(frozen=True)
class Guard:
    """Refuses edits whose |Δ| is too large or whose denominator is too close to zero."""

    max_delta_norm: float | None = None
    min_abs_denominator: float | None = None

    def reasons(self, denominator: float, delta_norm: float) -> list[str]:
        found = []
        if self.max_delta_norm is not None and not delta_norm <= self.max_delta_norm:
            found.append(
                f"|Δ| = ‖ΔW‖_F/numel = {delta_norm:.3g} exceeds max_delta_norm = "
                f"{self.max_delta_norm:.3g}"
            )
        minimum = self.min_abs_denominator
        if minimum is not None and not abs(denominator) >= minimum:
            found.append(
                f"|denominator| = {abs(denominator):.3g} is below min_abs_denominator "
                f"= {self.min_abs_denominator:.3g} (the keys are nearly orthogonal "
                "under C⁻¹; try variant 'r-rome' or 'p-rome')"
            )
        return found


def default_covariance(
    hparams: HParams,
    *,
    corpus: Corpus | None = None,
    npz_path: str | Path | None = None,
    n_samples: int | None = None,
    collect: Callable[..., Any] | None = None,
) -> CovarianceProvider:
    """C from ``rome_fast.stats.layer_second_moment`` with ``hparams``' sample count, document
    length and dtype, unless a corpus, a sample count or a public ``.npz`` file is given.
    With ``hparams.mom2_adjustment`` off, C is the identity (the public code then skips C⁻¹).
    ``collect`` computes C when it is not cached (e.g. sharded over Ray actors)."""
    if not hparams.mom2_adjustment:
        if corpus is not None or npz_path is not None or n_samples is not None:
            raise ValueError(
                "mom2_adjustment is off (C = I), so statistics options (a corpus, a file, a "
                "sample count) would be ignored: drop them or set mom2_adjustment to true"
            )
        return _identity_covariance
    if n_samples is not None and n_samples < 1:
        raise ValueError(f"the statistics need at least one document, got n_samples={n_samples}")
    samples = hparams.mom2_n_samples if n_samples is None else n_samples

    def provider(loaded: LoadedModel, layer: int) -> Covariance:
        from rome_fast.stats import layer_second_moment

        return layer_second_moment(
            loaded,
            layer,
            corpus=corpus,
            npz_path=npz_path,
            n_samples=samples,
            max_length=hparams.mom2_max_length,
            dtype=getattr(torch, hparams.mom2_dtype),
            collect=collect,
        )

    return provider


def _identity_covariance(loaded: LoadedModel, layer: int) -> Covariance:
    d_in = weight_matrix(loaded.adapter.edited_module(loaded.model, layer)).shape[1]
    return torch.eye(d_in, dtype=torch.float32)


class ForeignWriteError(RuntimeError):
    """A weight the editor manages was changed by someone else since its last write."""


def _fingerprint(weight: Tensor) -> tuple[int, str]:
    """The tensor's in-place version counter and a digest of its bytes."""
    data = weight.detach().contiguous().view(torch.uint8).cpu().numpy()
    return weight._version, hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest()


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = time.perf_counter() - start


class Editor:
    """Edits ``loaded.model`` in place at ``hparams.layer``.

    ``stats`` gives the key second moment C of a layer: a Tensor (d_in, d_in), a
    ``CovarianceFactor``, or a callable ``(loaded, layer) -> either``; by default
    ``rome_fast.stats.layer_second_moment``. Its Cholesky factor is computed once per layer.
    ``templates`` replaces the generated context templates (they must include ``"{}"``).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        hparams: HParams | None = None,
        seed: int = 0,
        stats: Covariance | CovarianceProvider | None = None,
        templates: list[str] | None = None,
    ) -> None:
        if loaded.model.training:
            raise ValueError(
                "the model is in training mode (dropout would perturb keys and "
                "values); call model.eval() first"
            )
        self.loaded = loaded
        self.hparams = hparams if hparams is not None else hparams_for(loaded.name)
        loaded.adapter.check_layer(loaded.model, self.hparams.layer)
        check_precision(self.hparams.v_precision, loaded.device)
        self.seed = seed
        self._stats = stats
        self._factors: dict[int, CovarianceFactor] = {}
        self._templates = list(templates) if templates is not None else None
        self._originals: dict[str, Tensor] = {}  # module name -> W0 as stored
        self._log: list[EditResult] = []
        self._undo: tuple[EditResult, Tensor] | None = None  # latest edit, its pre-edit weight
        self._written: dict[str, tuple[int, str]] = {}  # module name -> after our last write

    # -- inputs -----------------------------------------------------------------------------

    @property
    def layer(self) -> int:
        return self.hparams.layer

    @property
    def log(self) -> list[EditResult]:
        """The applied edits, oldest first."""
        return list(self._log)

    @property
    def templates(self) -> list[str]:
        """The context templates, generated once from the model as it is on first use."""
        if self._templates is None:
            self._templates = generate_context_templates(
                self.loaded.model,
                self.loaded.tokenizer,
                self.hparams.context_template_schedule,
                seed=self.seed,
                top_k=self.hparams.context_template_top_k,
            )
        return list(self._templates)

    def covariance(self, layer: int) -> CovarianceFactor:
        """The Cholesky factor of C for ``layer``, computed once per editor."""
        if layer not in self._factors:
            source = self._stats if self._stats is not None else default_covariance(self.hparams)
            C = source(self.loaded, layer) if callable(source) else source
            d_in = weight_matrix(self._module(layer)).shape[1]
            factor = C if isinstance(C, CovarianceFactor) else CovarianceFactor.from_matrix(C)
            if factor.d_in != d_in:
                raise ValueError(
                    f"the covariance is {factor.d_in}×{factor.d_in} but the keys "
                    f"of layer {layer} have {d_in} dimensions; pass C for this layer"
                )
            self._factors[layer] = factor
        return self._factors[layer]

    def _module(self, layer: int) -> nn.Module:
        return self.loaded.adapter.edited_module(self.loaded.model, layer)

    # -- editing ----------------------------------------------------------------------------

    def prepare(self, request: EditRequest) -> PreparedEdit:
        """Templates, keys and ``v*`` for ``request`` on the model as it is now.

        These do not depend on the variant: in single-edit runs one preparation serves every
        variant (``apply`` checks that the model has not been edited since).
        """
        start = time.perf_counter()
        target = target_token_ids(self.loaded.tokenizer, request.target_new)  # fails early
        layer = self.layer
        timer = _Timer()
        with timer.phase("templates"):
            templates = self.templates
        self._check_context(request, templates, len(target))
        with timer.phase("v_star"):
            value = self._value(request, templates)
        with timer.phase("keys"):
            keys = self._keys(request, templates, value)
        return PreparedEdit(
            request,
            layer,
            templates,
            keys,
            value,
            timer.timings,
            time.perf_counter() - start,
            self._state(),
        )

    def _check_context(self, request: EditRequest, templates: list[str], n_target: int) -> None:
        """Each v* prompt (template, filled prompt, target) must fit the model's context."""
        filled = request.prompt.replace("{}", request.subject)
        longest = max(
            len(self.loaded.tokenizer(t.replace("{}", filled))["input_ids"]) for t in templates
        )
        check_fits(self.loaded.model, longest + n_target, "the edit prompt with its target")

    def _state(self) -> tuple[EditResult, ...]:
        """The applied edits: a preparation is valid only while exactly these are applied.

        The preparation holds the objects themselves, compared by identity, so a reverted edit
        can never be mistaken for a later one that reuses its address (as ``id`` could).
        """
        return tuple(self._log)

    def _is_current(self, state: tuple[EditResult, ...]) -> bool:
        return len(state) == len(self._log) and all(
            then is now for then, now in zip(state, self._log, strict=True)
        )

    def edit(
        self, request: EditRequest, variant: str | Variant = "r-rome", *, guard: Guard | None = None
    ) -> EditResult:
        """Apply one edit in place, atomically; see the module docstring."""
        entry = self._check_variant(variant)  # resolved once, before the expensive part
        return self.apply(self.prepare(request), entry, guard=guard)

    def apply(
        self,
        prepared: PreparedEdit,
        variant: str | Variant = "r-rome",
        *,
        guard: Guard | None = None,
    ) -> EditResult:
        """Compute the variant's update from a preparation and apply it, atomically."""
        start = time.perf_counter()
        entry = self._check_variant(variant)
        if prepared.layer != self.layer or not self._is_current(prepared.state):
            raise ValueError(
                "this preparation was made for another layer or before other edits were "
                "applied; call prepare() again on the model as it is now"
            )
        request, keys, value, templates = (
            prepared.request,
            prepared.keys,
            prepared.value,
            prepared.templates,
        )
        layer, loaded = self.layer, self.loaded
        module = self._module(layer)
        timer = _Timer()
        timer.timings.update(prepared.timings)
        with timer.phase("stats"):
            self._update_statistics(layer)
        with timer.phase("update"):
            r = self._update_factors(module, keys, value, entry)
            applied = RankOne(
                r.left.detach().cpu().clone(),
                r.right.detach().cpu().clone(),
                r.denominator.detach().cpu().clone(),
            )
            denominator = float(applied.denominator)
            delta_norm = (
                float(
                    torch.linalg.vector_norm(applied.left) * torch.linalg.vector_norm(applied.right)
                )
                / _stored_weight(module).numel()
            )
            reasons = guard.reasons(denominator, delta_norm) if guard is not None else []
            if reasons:
                raise DisablingEditError(reasons, denominator, delta_norm)
        with timer.phase("apply"):
            saved = _stored_weight(module).detach().clone()
            try:
                self._write(module, applied)
                _require_finite_weight(module, self.loaded.adapter.edited_module_name(layer))
                residual_star = _relative_residual(module, keys.k_star, value.v_star)
                residual_prompt = _relative_residual(module, keys.k_prompt, value.v_star)
                result = EditResult(
                    request=request,
                    variant=entry.name,
                    layer=layer,
                    module_name=loaded.adapter.edited_module_name(layer),
                    left=applied.left,
                    right=applied.right,
                    denominator=denominator,
                    delta_norm=delta_norm,
                    relative_residual_k_star=residual_star,
                    relative_residual_k_prompt=residual_prompt,
                    key_cosine=float(
                        torch.nn.functional.cosine_similarity(keys.k_star, keys.k_prompt, dim=0)
                    ),
                    loss_trace=value.loss_trace,
                    timings=timer.timings,  # filled in as the phases end
                    templates=templates,
                    seed=self.seed,
                    # The statistics are computed once per layer and cached: not part of an edit.
                    edit_seconds=prepared.seconds
                    + time.perf_counter()
                    - start
                    - timer.timings["stats"],
                    k_star=keys.k_star.cpu(),
                    k_prompt=keys.k_prompt.cpu(),
                    v_star=value.v_star.cpu(),
                    adam_steps=len(value.loss_trace) - 1,  # the last iteration only evaluates
                    loss_steps=value.loss_steps,
                )
                self._record(result, saved)
            except BaseException:
                _copy_weight(module, saved)
                raise
        return result

    # -- the compute steps (``rome_fast.naive.NaiveEditor`` overrides them) -----------------

    def warm_up(self) -> None:
        """Generate the context templates and the layer's statistics now, so that an edit's
        ``edit_seconds`` holds the edit alone (both are made once per editor)."""
        _ = self.templates
        self._update_statistics(self.layer)

    def _check_variant(self, variant: str | Variant) -> RegisteredVariant:
        """The registered entry (unknown names fail here, before any work)."""
        return resolve_variant(variant)

    def _keys(self, request: EditRequest, templates: list[str], value: Any) -> KeysLike:
        """From the v* pass (``ValueResult.keys``): no forward pass of their own."""
        return Keys.from_per_template(value.keys, templates)

    def _value(self, request: EditRequest, templates: list[str]) -> ValueLike:
        return compute_v_star(
            self.loaded,
            self.layer,
            request.prompt,
            request.subject,
            request.target_new,
            templates,
            self.hparams,
        )

    def _update_statistics(self, layer: int) -> None:
        """Make the statistics of ``layer`` ready (timed apart: computed once, then cached)."""
        self.covariance(layer)

    def _update_factors(
        self, module: nn.Module, keys: Any, value: Any, variant: RegisteredVariant
    ) -> RankOne:
        bias = module_bias(module)
        return rank_one_factors(
            weight_matrix(module).detach(),
            self.covariance(self.layer),
            keys.k_star,
            keys.k_prompt,
            value.v_star,
            variant,
            bias=None if bias is None else bias.detach(),
        )

    def _write(self, module: nn.Module, r: RankOne) -> None:
        apply_rank_one(module, r)

    def _record(self, result: EditResult, pre_edit_weight: Tensor) -> None:
        self._originals.setdefault(result.module_name, pre_edit_weight)
        self._log.append(result)
        self._undo = (result, pre_edit_weight)
        self._note_write(result.module_name)

    def _note_write(self, module_name: str) -> None:
        weight = _stored_weight(self.loaded.model.get_submodule(module_name))
        self._written[module_name] = _fingerprint(weight)

    def _require_own(self, module_name: str, action: str) -> None:
        """Refuse ``action`` over a weight someone else has written since our last write."""
        weight = _stored_weight(self.loaded.model.get_submodule(module_name))
        version, digest = self._written[module_name]
        if weight._version != version and _fingerprint(weight)[1] != digest:
            raise ForeignWriteError(
                f"cannot {action}: {module_name}.weight was changed by someone else (another "
                "Editor on this model, or code writing the weight) since this editor's last "
                "edit, and copying back would discard that change; undo the other writer's "
                "edits first (the last edit first), then this editor's"
            )

    def revert(self, result: EditResult) -> None:
        """Undo ``result`` exactly (see the module docstring); raises if it is not applied."""
        index = next((i for i, e in enumerate(self._log) if e is result), None)
        if index is None:
            raise ValueError(
                "this edit is not applied by this editor (already reverted, "
                "restored, or made by another editor)"
            )
        self._require_own(result.module_name, "revert this edit")
        module = self.loaded.model.get_submodule(result.module_name)
        if self._undo is not None and self._undo[0] is result:
            _copy_weight(module, self._undo[1])
        else:
            _copy_weight(module, self._originals[result.module_name])
            for later in self._log:
                if later is not result and later.module_name == result.module_name:
                    apply_rank_one(module, later.rank_one)
        del self._log[index]
        self._undo = None
        self._note_write(result.module_name)

    def restore(self) -> None:
        """Every touched weight back to W0, bit-identical; the log is emptied."""
        for module_name in self._originals:
            self._require_own(module_name, "restore")
        for module_name, original in self._originals.items():
            _copy_weight(self.loaded.model.get_submodule(module_name), original)
            self._note_write(module_name)
        self._log.clear()
        self._undo = None

    @contextmanager
    def edited(
        self, request: EditRequest, variant: str | Variant = "r-rome", *, guard: Guard | None = None
    ) -> Iterator[EditResult]:
        """Edit, yield the result, revert on exit (also on error)."""
        result = self.edit(request, variant, guard=guard)
        try:
            yield result
        finally:
            if any(e is result for e in self._log):
                self.revert(result)

    # -- the edit log -----------------------------------------------------------------------

    def save_log(self, path: str | Path) -> Path:
        """Write ``edits.json`` and ``factors.safetensors`` into the folder ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, Tensor] = {}
        entries = []
        for i, result in enumerate(self._log):
            for key in ("left", "right", "k_star", "k_prompt", "v_star"):
                tensors[f"edit{i}.{key}"] = getattr(result, key).contiguous()
            entries.append(_entry_json(result))
        meta = {
            "format": LOG_FORMAT,
            "version": LOG_VERSION,
            "model": self.loaded.name,
            "seed": self.seed,
            "hparams": dataclasses.asdict(self.hparams),
            "edits": entries,
        }
        save_file(tensors, str(folder / LOG_TENSORS))
        (folder / LOG_JSON).write_text(json.dumps(meta, indent=1, ensure_ascii=False))
        return folder

    def replay_log(
        self, path: str | Path, *, check_model: bool = True, guard: Guard | None = None
    ) -> list[EditResult]:
        """Apply a saved log's factors in order (atomically: all or nothing); ``guard``
        refuses the whole log, before any weight is touched, if any of its edits fails it."""
        results = read_log(path)
        meta = json.loads((Path(path) / LOG_JSON).read_text())
        if check_model and meta["model"] != self.loaded.name:
            raise ValueError(
                f"the log was written for model {meta['model']!r}, not "
                f"{self.loaded.name!r}; pass check_model=False to apply it anyway"
            )
        for result in results:
            module = self.loaded.model.get_submodule(result.module_name)
            W = weight_matrix(module)
            if tuple(W.shape) != (result.left.numel(), result.right.numel()):
                raise ValueError(
                    f"edit of {result.module_name} has factors for a "
                    f"{result.left.numel()}×{result.right.numel()} weight, the "
                    f"model's is {tuple(W.shape)}"
                )
            reasons = guard.reasons(result.denominator, result.delta_norm) if guard else []
            if reasons:
                raise DisablingEditError(
                    [f"{result.module_name}: {r}" for r in reasons],
                    result.denominator,
                    result.delta_norm,
                )
        saved = {
            r.module_name: _stored_weight(self.loaded.model.get_submodule(r.module_name))
            .detach()
            .clone()
            for r in results
        }
        log_length, undo, written = len(self._log), self._undo, dict(self._written)
        try:
            for result in results:
                module = self.loaded.model.get_submodule(result.module_name)
                pre_edit = _stored_weight(module).detach().clone()
                apply_rank_one(module, result.rank_one)
                self._record(result, pre_edit)
        except BaseException:
            for module_name, weight in saved.items():
                _copy_weight(self.loaded.model.get_submodule(module_name), weight)
            del self._log[log_length:]
            self._undo, self._written = undo, written
            raise
        return results


def read_log(path: str | Path) -> list[EditResult]:
    """The edits of a log written by ``Editor.save_log``, oldest first."""
    folder = Path(path)
    meta = json.loads((folder / LOG_JSON).read_text())
    if meta.get("format") != LOG_FORMAT or meta.get("version") != LOG_VERSION:
        raise ValueError(f"{folder} does not hold a {LOG_FORMAT} version {LOG_VERSION} log")
    tensors = load_file(str(folder / LOG_TENSORS))
    results = []
    for i, entry in enumerate(meta["edits"]):
        fields = dict(entry)
        fields["request"] = EditRequest(**entry["request"])
        for key in ("left", "right", "k_star", "k_prompt", "v_star"):
            fields[key] = tensors[f"edit{i}.{key}"]
        results.append(EditResult(**fields))
    return results


def _entry_json(result: EditResult) -> dict[str, Any]:
    tensor_fields = {"left", "right", "k_star", "k_prompt", "v_star"}
    entry = {
        f.name: getattr(result, f.name)
        for f in dataclasses.fields(result)
        if f.name not in tensor_fields
    }
    entry["request"] = dataclasses.asdict(result.request)
    return entry


def _stored_weight(module: nn.Module) -> Tensor:
    """The weight parameter as stored (any orientation): what copies save and restore."""
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight


def _copy_weight(module: nn.Module, weight: Tensor) -> None:
    with torch.no_grad():
        _stored_weight(module).copy_(weight)


def _require_finite_weight(module: nn.Module, name: str) -> None:
    weight = _stored_weight(module)
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(
            f"the edit made {name}.weight non-finite (overflow in its dtype "
            f"{weight.dtype}); the model was restored; use a wider dtype"
        )


@torch.no_grad()
def _relative_residual(module: nn.Module, key: Tensor, v_star: Tensor) -> float:
    """‖module(k) − v*‖ / ‖v*‖, reading the edited module itself (bias included)."""
    weight = _stored_weight(module)
    out = module(key.to(device=weight.device, dtype=weight.dtype)[None])[0].float()
    target = v_star.to(out.device)
    return float(torch.linalg.vector_norm(out - target) / torch.linalg.vector_norm(target))
