"""The editor: atomic edits of a loaded model, exact reverts, and an edit log.

One edit runs six phases, each timed: context templates (generated once per editor,
seeded), target value ``v*``, keys ``k*``/``k_prompt`` (read in the v* pass), the statistics
(the covariance factor, prepared once per layer), the update (an ``Update``: per-site factors;
ROME writes one site of rank one), and applying it. Nothing touches the model before the apply
phase, which writes every site or none: a failure during it (or non-finite weights after it)
restores the saved pre-edit weights, so a failed edit leaves every weight bit-identical.

Exactness of undo:

* ``revert`` of the most recent edit copies back the weights saved just before it;
* ``revert`` of an older edit rebuilds each of its sites' weights from W0 by re-applying the
  remaining edits of that module in order, through the same write, which is bit-identical to
  never having applied it (the later edits keep the factors they were computed with);
* ``restore`` copies back W0 of every touched weight.

Another writer: the editor notes each weight it writes (``rome_fast.edit.ownership``). ``revert``
and ``restore`` refuse with ``ForeignWriteError`` when a weight has changed since the editor's
last write to it (a second editor on the same model, or code writing the weight), because
copying back would silently discard that change: undo the other writer's edits first (the
last edit first), then this editor's. A new edit stacks on whatever the weight holds and
counts as this editor's write.

Memory: one copy of each touched weight (W0) plus one pre-edit copy of the latest edit's
weights; never a copy of the whole model.

The log (``save_log``, ``rome_fast.edit.log``) holds the factors exactly as applied and
everything else as JSON; ``replay_log`` on a fresh copy of the model applies them in the same
order, dtype and code path, giving bit-identical weights.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from rome_fast.edit import batch_edit
from rome_fast.edit.batch_edit import BatchStatistics, BatchTargetsLike
from rome_fast.edit.batch_result import Applied, BatchResult
from rome_fast.edit.batch_targets import compute_batch_targets
from rome_fast.edit.guard import Guard
from rome_fast.edit.keys import Keys
from rome_fast.edit.log import read_replayable, write_log
from rome_fast.edit.ownership import (
    Fingerprint,
    copy_weight,
    fingerprint,
    require_finite_weights,
    require_own,
    stored_weight,
)
from rome_fast.edit.prepared import KeysLike, PreparedEdit, ValueLike
from rome_fast.edit.request import EditRequest, EditResult, normalized_delta_norm
from rome_fast.edit.residuals import relative_residual
from rome_fast.edit.templates import generate_context_templates
from rome_fast.edit.value import ValueResult, compute_v_star
from rome_fast.hparams.batched import MethodHParams
from rome_fast.hparams.defaults import HParams, hparams_for
from rome_fast.infra.timer import PhaseTimer
from rome_fast.methods.rome.update import CovarianceFactor, RankOne, Variant, rank_one_factors
from rome_fast.methods.rome.variants import RegisteredVariant, variant_entry
from rome_fast.model.context import check_fits
from rome_fast.model.loader import LoadedModel
from rome_fast.model.precision import check_precision
from rome_fast.model.site import EditedSite
from rome_fast.model.tokens import target_token_ids
from rome_fast.model.weights import apply_factors
from rome_fast.solve.low_rank import Factors, SiteUpdate, Update
from rome_fast.stats.covariance import Covariance, CovarianceProvider, default_covariance


class Editor:
    """Edits ``loaded.model`` in place at ``hparams.layer``.

    ``stats`` gives the key second moment C of a layer: a Tensor (d_in, d_in), a
    ``CovarianceFactor``, or a callable ``(loaded, layer) -> either``; by default
    ``rome_fast.stats.collect.layer_second_moment``. Its Cholesky factor is computed once per layer.
    ``templates`` replaces the generated context templates (they must include ``"{}"``).
    ``earlier_batches``: AlphaEdit batches written before this editor by another one (their
    weights not this editor's to revert, and not in its log): its Kₚ starts with their keys.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        hparams: HParams | None = None,
        seed: int = 0,
        stats: Covariance | CovarianceProvider | None = None,
        templates: list[str] | None = None,
        earlier_batches: Sequence[BatchResult] = (),
    ) -> None:
        if loaded.model.training:
            raise ValueError(
                "the model is in training mode (dropout would perturb keys and "
                "values); call model.eval() first"
            )
        self.loaded = loaded
        self.hparams = hparams if hparams is not None else hparams_for(loaded.name)
        self.site = loaded.adapter.edited_site(loaded.model, self.hparams.layer)
        check_precision(self.hparams.v_star.precision, loaded.device)
        self.seed = seed
        self._stats = stats
        self._factors: dict[int, CovarianceFactor] = {}
        self._templates = list(templates) if templates is not None else None
        self._originals: dict[str, Tensor] = {}  # module name -> W0 as stored
        self._log: list[Applied] = []
        # The latest edit and its pre-edit weights (module name -> stored copy).
        self._undo: tuple[Applied, dict[str, Tensor]] | None = None
        self._batch_statistics = BatchStatistics(earlier_batches)
        self._written: dict[str, Fingerprint] = {}  # module name -> after our last write

    # -- inputs -----------------------------------------------------------------------------

    @property
    def layer(self) -> int:
        return self.site.layer

    @property
    def log(self) -> list[Applied]:
        """The applied edits (single and batched), oldest first."""
        return list(self._log)

    @property
    def templates(self) -> list[str]:
        """The context templates, generated once from the model as it is on first use."""
        if self._templates is None:
            self._templates = generate_context_templates(
                self.loaded.model,
                self.loaded.tokenizer,
                self.hparams.v_star.context_template_schedule,
                seed=self.seed,
                top_k=self.hparams.v_star.context_template_top_k,
            )
        return list(self._templates)

    def covariance(self, layer: int) -> CovarianceFactor:
        """The Cholesky factor of C for ``layer``, computed once per editor."""
        if layer not in self._factors:
            source = self._stats if self._stats is not None else default_covariance(self.hparams)
            C = source(self.loaded, layer) if callable(source) else source
            d_in = self.loaded.adapter.edited_site(self.loaded.model, layer).d_in
            factor = C if isinstance(C, CovarianceFactor) else CovarianceFactor.from_matrix(C)
            if factor.d_in != d_in:
                raise ValueError(
                    f"the covariance is {factor.d_in}×{factor.d_in} but the keys "
                    f"of layer {layer} have {d_in} dimensions; pass C for this layer"
                )
            self._factors[layer] = factor
        return self._factors[layer]

    # -- editing ----------------------------------------------------------------------------

    def prepare(self, request: EditRequest) -> PreparedEdit:
        """Templates, keys and ``v*`` for ``request`` on the model as it is now.

        These do not depend on the variant: in single-edit runs one preparation serves every
        variant (``apply`` checks that the model has not been edited since).
        """
        start = time.perf_counter()
        target = target_token_ids(self.loaded.tokenizer, request.target_new)  # fails early
        layer = self.layer
        timer = PhaseTimer()
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

    def _state(self) -> tuple[Applied, ...]:
        """The applied edits: a preparation is valid only while exactly these are applied.

        The preparation holds the objects themselves, compared by identity, so a reverted edit
        can never be mistaken for a later one that reuses its address (as ``id`` could).
        """
        return tuple(self._log)

    def _is_current(self, state: tuple[Applied, ...]) -> bool:
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
        site = self.site
        timer = PhaseTimer(prepared.timings)
        with timer.phase("stats"):
            self._prepare_covariance(site.layer)
        with timer.phase("update"):
            update, denominator = self._compute_update(keys, value, entry)
            if guard is not None:
                guard.check(update, denominator)
        with timer.phase("apply"):
            saved = self._write(update)
            try:
                require_finite_weights(self.loaded.model, update)
                residual_star = relative_residual(site.module, keys.k_star, value.v_star)
                residual_prompt = relative_residual(site.module, keys.k_prompt, value.v_star)
                result = EditResult(
                    request=request,
                    variant=entry.name,
                    update=update,
                    denominator=denominator,
                    delta_norm=max(normalized_delta_norm(s.factors) for s in update),
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
                self._copy_back(saved)
                raise
        return result

    # -- the compute steps (``rome_fast.edit.naive.NaiveEditor`` overrides them) -----------------

    def warm_up(self) -> None:
        """Generate the context templates and the layer's statistics now, so that an edit's
        ``edit_seconds`` holds the edit alone (both are made once per editor)."""
        _ = self.templates
        self._prepare_covariance(self.layer)

    def _check_variant(self, variant: str | Variant) -> RegisteredVariant:
        """The registered entry (unknown names fail here, before any work)."""
        return variant_entry(variant)

    def _keys(self, _request: EditRequest, templates: list[str], value: ValueLike) -> KeysLike:
        """From the v* pass (``ValueResult.keys``): no forward pass of their own."""
        assert isinstance(value, ValueResult)  # made by this class's ``_value``
        return Keys.from_per_template(value.keys, templates)

    def _value(self, request: EditRequest, templates: list[str]) -> ValueLike:
        return compute_v_star(self.loaded, self.site, request, templates, self.hparams.v_star)

    def _prepare_covariance(self, layer: int) -> None:
        """Make C of ``layer`` ready for the update (timed apart: computed once, then cached)."""
        self.covariance(layer)

    def _compute_update(
        self, keys: KeysLike, value: ValueLike, variant: RegisteredVariant
    ) -> tuple[Update, float]:
        """The update to write and its denominator: ROME's one site of rank one, as CPU
        copies in the accumulation dtype (what the result and the log hold)."""
        r = self._update_factors(self.site, keys, value, variant)
        left, right = (x.detach().cpu().clone() for x in (r.left, r.right))
        site = SiteUpdate(
            self.site.layer,
            self.site.module_name,
            Factors.from_rank_one(RankOne(left, right, r.denominator)),
        )
        return Update((site,)), float(r.denominator)

    def _update_factors(
        self, site: EditedSite, keys: KeysLike, value: ValueLike, variant: RegisteredVariant
    ) -> RankOne:
        bias = site.bias
        return rank_one_factors(
            site.weight.detach(),
            self.covariance(site.layer),
            keys.k_star,
            keys.k_prompt,
            value.v_star,
            variant,
            bias=None if bias is None else bias.detach(),
        )

    def _write_site(self, module: nn.Module, factors: Factors) -> None:
        """``W += left @ rightᵀ``: every write of an edit's factors (apply, revert's rebuild,
        replay) goes through here, so rebuilt weights round as the original writes did."""
        apply_factors(module, factors)

    def _write(self, update: Update) -> dict[str, Tensor]:
        """Write every site of ``update`` or none: the pre-edit weights (module name -> stored
        copy) once all are written; on a failure they are copied back and the error raised."""
        saved: dict[str, Tensor] = {}
        try:
            for site in update:
                module = self.loaded.model.get_submodule(site.module_name)
                saved[site.module_name] = stored_weight(module).detach().clone()
                self._write_site(module, site.factors)
        except BaseException:
            self._copy_back(saved)
            raise
        return saved

    def _copy_back(self, weights: dict[str, Tensor]) -> None:
        for module_name, weight in weights.items():
            copy_weight(self.loaded.model.get_submodule(module_name), weight)

    def _record(self, result: Applied, pre_edit: dict[str, Tensor]) -> None:
        for module_name, weight in pre_edit.items():
            self._originals.setdefault(module_name, weight)  # W0: the first write's pre-edit
        self._log.append(result)
        self._undo = (result, pre_edit)
        for module_name in pre_edit:
            self._note_write(module_name)

    def _note_write(self, module_name: str) -> None:
        self._written[module_name] = fingerprint(self.loaded.model.get_submodule(module_name))

    def _require_own(self, module_name: str, action: str) -> None:
        module = self.loaded.model.get_submodule(module_name)
        require_own(module, module_name, self._written[module_name], action)

    def revert(self, result: Applied) -> None:
        """Undo ``result`` exactly (see the module docstring); raises if it is not applied."""
        index = next((i for i, e in enumerate(self._log) if e is result), None)
        if index is None:
            raise ValueError(
                "this edit is not applied by this editor (already reverted, "
                "restored, or made by another editor)"
            )
        for module_name in result.module_names:
            self._require_own(module_name, "revert this edit")
        if self._undo is not None and self._undo[0] is result:
            self._copy_back(self._undo[1])
        else:
            for module_name in result.module_names:
                self._rebuild_without(result, module_name)
        del self._log[index]
        self._undo = None
        self._batch_statistics.recall(self._log)
        for module_name in result.module_names:
            self._note_write(module_name)

    def _rebuild_without(self, result: Applied, module_name: str) -> None:
        """``module_name``'s weight from W0 plus every other logged edit of it, in log order."""
        module = self.loaded.model.get_submodule(module_name)
        copy_weight(module, self._originals[module_name])
        for later in self._log:
            if later is not result and module_name in later.module_names:
                self._write_site(module, later.update.at(module_name))

    def restore(self) -> None:
        """Every touched weight back to W0, bit-identical; the log is emptied."""
        for module_name in self._originals:
            self._require_own(module_name, "restore")
        for module_name, original in self._originals.items():
            copy_weight(self.loaded.model.get_submodule(module_name), original)
            self._note_write(module_name)
        self._log.clear()
        self._undo = None
        self._batch_statistics.recall(self._log)

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

    # -- many facts at once -----------------------------------------------------------------

    def edit_batch(
        self,
        requests: Sequence[EditRequest],
        method: str = "memit",
        *,
        keys: str = "memit",
        method_hparams: MethodHParams | None = None,
        guard: Guard | None = None,
    ) -> BatchResult:
        """Write every fact of ``requests`` with ``method`` (``"memit"``, ``"emmet"`` or
        ``"alphaedit"``) in place, atomically, at the keys ``keys`` names (``"memit"``: the
        public ½ bare + ½ prefix mean; ``"k_star"``, ``"k_prompt"``: the homogeneous choices,
        as r-ROME and p-ROME; ``rome_fast.edit.batch_keys``); ``method_hparams`` default per
        model (``rome_fast.hparams.batched``). ``revert``, ``restore`` and the log take the
        result as any edit; a singular batch is refused naming its two facts
        (``rome_fast.edit.batch_edit``)."""
        return batch_edit.edit_batch(self, requests, method, keys, method_hparams, guard)

    def _batch_targets(
        self, requests: Sequence[EditRequest], templates: list[str], layer: int
    ) -> BatchTargetsLike:
        """The n facts' targets at ``layer``, one optimization on the model as it is now."""
        return compute_batch_targets(self.loaded, layer, requests, templates, self.hparams.v_star)

    # -- the edit log -----------------------------------------------------------------------

    def save_log(self, path: str | Path) -> Path:
        """Write ``edits.json`` and ``factors.safetensors`` into the folder ``path``."""
        return write_log(
            path, self._log, model=self.loaded.name, seed=self.seed, hparams=self.hparams
        )

    def replay_log(
        self, path: str | Path, *, check_model: bool = True, guard: Guard | None = None
    ) -> list[Applied]:
        """Apply a saved log's factors in order (atomically: all or nothing); ``guard``
        refuses the whole log, before any weight is touched, if any of its edits fails it."""
        results = read_replayable(
            path, self.loaded.model, self.loaded.name, check_model=check_model, guard=guard
        )
        self.replay(results)
        return results

    def replay(self, results: Sequence[Applied]) -> None:
        """Apply edits read from a log (``read_replayable``: checked against this model) in
        order, atomically: all or nothing. A log read elsewhere (a run's driver) is applied
        here as it would be by ``replay_log``."""
        model = self.loaded.model
        saved: dict[str, Tensor] = {}  # every weight the log writes, as it was before
        for result in results:
            for module_name in result.module_names:
                module = model.get_submodule(module_name)
                saved.setdefault(module_name, stored_weight(module).detach().clone())
        log_length, undo, written = len(self._log), self._undo, dict(self._written)
        try:
            for result in results:
                self._record(result, self._write(result.update))
        except BaseException:
            self._copy_back(saved)
            del self._log[log_length:]
            self._undo, self._written = undo, written
            raise
        finally:
            self._batch_statistics.recall(self._log)
