"""The editor: exact insertion, atomicity, exact revert/restore, replayable log, guard."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rome_fast.edit.editor as editor_module
from rome_fast.edit.editor import Editor
from rome_fast.edit.guard import DisablingEditError, Guard
from rome_fast.edit.keys import Keys, compute_keys
from rome_fast.edit.naive import NaiveEditor
from rome_fast.edit.request import EditRequest
from rome_fast.hparams.defaults import HParams
from rome_fast.model.loader import LoadedModel
from rome_fast.model.weights import apply_factors, weight_matrix
from rome_fast.solve.low_rank import Factors
from tests.models import (
    EDIT,
    FAMILIES,
    REQUEST,
    TEMPLATES,
    at,
    changed_parameters,
    fresh_model,
    key_dim,
    random_spd,
    require_smollm2,
    tiny_hparams,
    weights_of,
)

LAYER = 1
OTHER = EditRequest("{} plays the sport of", "Lionel Messi", "tennis")
RELATIVE_F32 = 1e-5


def make_editor(family: str = "tiny-gpt2", **kwargs: object) -> tuple[LoadedModel, Editor]:
    loaded = fresh_model(family)
    options: dict[str, object] = {
        "hparams": tiny_hparams(family),
        "templates": TEMPLATES,
        "stats": random_spd(key_dim(loaded, LAYER)),
    }
    options.update(kwargs)
    return loaded, Editor(loaded, **options)  # type: ignore[arg-type]


def module_output(loaded: LoadedModel, key: torch.Tensor) -> torch.Tensor:
    module = loaded.adapter.edited_module(loaded.model, LAYER)
    with torch.no_grad():
        out: torch.Tensor = module(key[None])[0]
    return out


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("family", FAMILIES)
def test_keys_read_in_the_v_star_pass_are_the_key_pass_ones(family: str, padding_side: str) -> None:
    """The editor reads k* and k_prompt in the v* pass; a forward of their own agrees."""
    loaded, editor = make_editor(family, hparams=tiny_hparams(family, padding_side=padding_side))
    prepared = editor.prepare(EditRequest(*REQUEST))
    expected = compute_keys(*at(loaded, LAYER), EDIT, TEMPLATES, padding_side)
    assert isinstance(prepared.keys, Keys)
    torch.testing.assert_close(prepared.keys.per_template, expected.per_template)
    torch.testing.assert_close(prepared.keys.k_star, expected.k_star)
    torch.testing.assert_close(prepared.keys.k_prompt, expected.k_prompt)


@pytest.mark.parametrize("family", FAMILIES)
def test_r_rome_inserts_v_star_at_k_star(family: str) -> None:
    loaded, editor = make_editor(family)
    before = weights_of(loaded)
    result = editor.edit(EditRequest(*REQUEST), "r-rome")
    module_name = f"{result.module_name}.weight"
    assert changed_parameters(loaded, before) == [module_name]
    # read the edited module itself (bias included), not the result's own diagnostic
    assert relative_error(module_output(loaded, result.k_star), result.v_star) < RELATIVE_F32
    assert result.relative_residual_k_star < RELATIVE_F32
    assert result.denominator > 0


def test_original_rome_misses_k_star_and_hits_k_prompt() -> None:
    loaded, editor = make_editor("tiny-gpt2")
    result = editor.edit(EditRequest(*REQUEST), "rome")
    assert relative_error(module_output(loaded, result.k_prompt), result.v_star) < RELATIVE_F32
    assert relative_error(module_output(loaded, result.k_star), result.v_star) > 1e-3
    assert result.relative_residual_k_star > 1e-3


def test_diagnostics_describe_the_applied_update() -> None:
    loaded, editor = make_editor("tiny-llama")
    W_before = weight_matrix(loaded.adapter.edited_module(loaded.model, LAYER)).detach().clone()
    result = editor.edit(EditRequest(*REQUEST), "p-rome")
    W_after = weight_matrix(loaded.adapter.edited_module(loaded.model, LAYER)).detach()
    delta = W_after - W_before  # Linear: already (d_out, d_in)
    torch.testing.assert_close(delta, result.update.at(result.module_name).delta())
    assert result.delta_norm == pytest.approx(float(delta.norm()) / delta.numel(), rel=1e-4)
    cosine = float(torch.nn.functional.cosine_similarity(result.k_star, result.k_prompt, dim=0))
    assert result.key_cosine == pytest.approx(cosine)
    assert set(result.timings) >= {"templates", "keys", "v_star", "update", "apply"}
    assert result.templates == TEMPLATES
    assert result.seed == 0
    assert len(result.loss_trace) == 3


@pytest.mark.parametrize(
    "target", ["compute_v_star", "relative_residual", "require_finite_weights"]
)
def test_a_failed_edit_leaves_every_weight_bit_identical(
    monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    loaded, editor = make_editor("tiny-gpt2")
    editor.edit(OTHER)  # a prior edit must survive the failed one too
    before = weights_of(loaded)

    def fail(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(editor_module, target, fail)
    with pytest.raises(RuntimeError, match="injected"):
        editor.edit(EditRequest(*REQUEST))
    assert changed_parameters(loaded, before) == []
    assert len(editor.log) == 1


def test_non_finite_weights_after_applying_are_rolled_back(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded, editor = make_editor("tiny-gpt2")
    before = weights_of(loaded)
    real_apply = apply_factors

    def overflowing_apply(module: torch.nn.Module, factors: Factors, sign: float = 1.0) -> None:
        real_apply(module, factors, sign=sign)
        with torch.no_grad():
            weight_matrix(module)[0, 0] = float("inf")  # as if the update overflowed the dtype

    monkeypatch.setattr(editor_module, "apply_factors", overflowing_apply)
    with pytest.raises(ValueError, match="non-finite"):
        editor.edit(EditRequest(*REQUEST))
    assert changed_parameters(loaded, before) == []
    assert editor.log == []


def test_guard_refuses_disabling_edits_without_touching_the_model() -> None:
    loaded, editor = make_editor("tiny-gpt2")
    before = weights_of(loaded)
    with pytest.raises(DisablingEditError, match="max_delta_norm") as info:
        editor.edit(EditRequest(*REQUEST), guard=Guard(max_delta_norm=0.0))
    assert info.value.delta_norm > 0
    with pytest.raises(DisablingEditError, match="min_abs_denominator"):
        editor.edit(EditRequest(*REQUEST), guard=Guard(min_abs_denominator=float("inf")))
    assert changed_parameters(loaded, before) == []
    assert editor.log == []
    editor.edit(EditRequest(*REQUEST), guard=Guard(max_delta_norm=1.0, min_abs_denominator=0.0))


def test_revert_latest_older_and_restore_are_exact() -> None:
    loaded, editor = make_editor("tiny-neox")
    w0 = weights_of(loaded)
    first = editor.edit(EditRequest(*REQUEST))
    after_first = weights_of(loaded)
    second = editor.edit(OTHER, "p-rome")
    editor.revert(second)  # the latest: the saved copy
    assert changed_parameters(loaded, after_first) == []
    second = editor.edit(OTHER, "p-rome")
    editor.revert(first)  # an older one: W0 then the remaining edits
    # reference: the second edit's factors alone on a fresh W0
    only_second = fresh_model("tiny-neox")
    module = only_second.adapter.edited_module(only_second.model, LAYER)
    apply_factors(module, second.update.at(second.module_name))
    assert changed_parameters(loaded, weights_of(only_second)) == []
    editor.edit(EditRequest(*REQUEST))
    editor.restore()
    assert changed_parameters(loaded, w0) == []
    assert editor.log == []
    with pytest.raises(ValueError, match="not applied"):
        editor.revert(second)


def test_edited_context_restores_on_exit() -> None:
    loaded, editor = make_editor("tiny-gpt2")
    before = weights_of(loaded)
    with editor.edited(EditRequest(*REQUEST)) as result:
        assert result.relative_residual_k_star < RELATIVE_F32
        assert changed_parameters(loaded, before) != []
    assert changed_parameters(loaded, before) == []


def test_log_replay_on_a_fresh_model_is_bit_identical(tmp_path: Path) -> None:
    loaded, editor = make_editor("tiny-gptj")
    first = editor.edit(EditRequest(*REQUEST))
    editor.edit(OTHER, "rome")
    editor.edit(EditRequest("{} was born in", "Danielle Darrieux", "London"), "p-rome")
    editor.revert(first)
    editor.save_log(tmp_path)
    replayed_model, replayer = make_editor("tiny-gptj", stats=torch.eye(2))
    results = replayer.replay_log(tmp_path)
    assert changed_parameters(replayed_model, weights_of(loaded)) == []
    assert [r.as_record()["request"] for r in results] == [
        r.as_record()["request"] for r in editor.log
    ]
    replayer.restore()
    assert changed_parameters(replayed_model, weights_of(fresh_model("tiny-gptj"))) == []


def test_replay_refuses_another_model(tmp_path: Path) -> None:
    _, editor = make_editor("tiny-gpt2")
    editor.edit(EditRequest(*REQUEST))
    editor.save_log(tmp_path)
    other, replayer = make_editor("tiny-neox")
    before = weights_of(other)
    with pytest.raises(ValueError, match="written for model"):
        replayer.replay_log(tmp_path)
    assert changed_parameters(other, before) == []


def test_same_seed_gives_bit_identical_edits() -> None:
    small = tiny_hparams("tiny-gpt2", context_template_schedule=((3, 2), (4, 2)))
    results = []
    for seed in (5, 5, 6):
        _, editor = make_editor("tiny-gpt2", hparams=small, templates=None, seed=seed)
        results.append(editor.edit(EditRequest(*REQUEST)))
    same, again, other = results
    assert same.templates == again.templates
    assert len(same.templates) == 5
    for mine, twin in zip(same.update, again.update, strict=True):
        assert torch.equal(mine.factors.left, twin.factors.left)
        assert torch.equal(mine.factors.right, twin.factors.right)
    assert same.loss_trace == again.loss_trace
    assert same.seed == 5
    assert other.templates != same.templates
    assert other.seed == 6


def test_covariance_is_factored_once_per_layer() -> None:
    loaded = fresh_model("tiny-gpt2")
    calls = []

    def provider(model: LoadedModel, layer: int) -> torch.Tensor:
        calls.append(layer)
        return random_spd(key_dim(model, layer))

    editor = Editor(loaded, hparams=tiny_hparams("tiny-gpt2"), templates=TEMPLATES, stats=provider)
    editor.edit(EditRequest(*REQUEST))
    second = editor.edit(OTHER)
    assert calls == [LAYER]
    assert second.relative_residual_k_star < RELATIVE_F32


def test_covariance_of_the_wrong_size_is_refused() -> None:
    loaded, editor = make_editor("tiny-gpt2", stats=torch.eye(3))
    before = weights_of(loaded)
    with pytest.raises(ValueError, match="3×3"):
        editor.edit(EditRequest(*REQUEST))
    assert changed_parameters(loaded, before) == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (("The Eiffel Tower is in", "The Eiffel Tower", "Rome"), "exactly one"),
        (("{} is in {}", "The Eiffel Tower", "Rome"), "exactly one"),
        (("{} is in", "", "Rome"), "subject"),
        (("{} is in", "The Eiffel Tower", "  "), "target_new"),
    ],
)
def test_bad_requests_raise(fields: tuple[str, str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EditRequest(*fields)


def test_unknown_variant_and_bad_layer_raise_before_any_work() -> None:
    loaded, editor = make_editor("tiny-gpt2")
    with pytest.raises(ValueError, match=r"unknown variant 'r-rom'.*r-rome"):
        editor.edit(EditRequest(*REQUEST), "r-rom")
    with pytest.raises(ValueError, match="out of range"):
        Editor(loaded, hparams=HParams(layer=4), stats=torch.eye(2))


def test_unlocatable_subject_raises_and_leaves_the_model() -> None:
    loaded, editor = make_editor("tiny-gpt2")
    before = weights_of(loaded)
    with pytest.raises(ValueError, match="cannot locate"):
        editor.edit(EditRequest("{}s are", "Rome", "Paris"))
    assert changed_parameters(loaded, before) == []


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_counterfactual_edit_generalizes() -> None:
    require_smollm2()
    from rome_fast.eval.score import mean_token_nll
    from rome_fast.model.loader import load_model

    loaded = load_model("smollm2")
    editor = Editor(loaded, seed=0)  # the model's own statistics settings (cached once)
    prompt = "The Eiffel Tower is located in the city of"
    paraphrase = "Where is the Eiffel Tower? It is in the city of"

    def rome_beats_paris(text: str) -> bool:
        pair = [text, text]
        rome, paris = mean_token_nll(loaded.model, loaded.tokenizer, pair, ["Rome", "Paris"])
        return bool(rome < paris)

    assert not rome_beats_paris(prompt)
    editor.edit(EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris"))
    with torch.no_grad():
        ids = loaded.tokenizer(prompt, return_tensors="pt")
        top = int(loaded.model(**ids).logits[0, -1].argmax())
    assert str(loaded.tokenizer.decode([top])).strip() == "Rome"
    assert rome_beats_paris(paraphrase)
    editor.restore()


def test_a_preparation_is_refused_once_another_edit_is_applied() -> None:
    _, editor = make_editor()
    prepared = editor.prepare(EditRequest(*REQUEST))
    editor.edit(OTHER)
    with pytest.raises(ValueError, match="call prepare"):
        editor.apply(prepared, "r-rome")


def test_a_preparation_serves_again_once_the_edits_since_are_reverted() -> None:
    loaded, editor = make_editor()
    prepared = editor.prepare(EditRequest(*REQUEST))
    first = editor.apply(prepared, "rome")
    editor.revert(first)
    second = editor.apply(prepared, "r-rome")  # single-edit runs: one preparation per variant
    assert changed_parameters(loaded, weights_of(fresh_model("tiny-gpt2")))
    editor.revert(second)


def test_a_preparation_is_refused_after_its_edits_are_replaced_by_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Made while edit A was applied; A is reverted and B applied in its place. B is not A even
    where B's object takes A's old address (simulated: every object gets the same id)."""
    monkeypatch.setattr(editor_module, "id", lambda _obj: 0, raising=False)
    _, editor = make_editor()
    applied = editor.edit(OTHER)
    prepared = editor.prepare(EditRequest(*REQUEST))
    editor.revert(applied)
    editor.edit(OTHER)
    with pytest.raises(ValueError, match="call prepare"):
        editor.apply(prepared, "r-rome")


@pytest.mark.parametrize("entry", ["apply", "edited", "naive edit", "replay_log"])
def test_guard_holds_on_every_entry_point_that_edits(entry: str, tmp_path: Path) -> None:
    """``edit`` is tested above; ``apply`` (of a preparation), the ``edited`` context manager,
    the naive editor's ``edit`` and ``replay_log`` (of a log saved without a guard) take the
    same guard and refuse before touching the model. The evaluation runner applies none on
    purpose: it measures disabling edits."""
    loaded, editor = make_editor("tiny-gpt2")
    guard = Guard(max_delta_norm=0.0)
    request = EditRequest(*REQUEST)
    if entry == "replay_log":
        editor.edit(request)
        editor.save_log(tmp_path)
        editor.restore()
    before = weights_of(loaded)
    if entry == "apply":
        prepared = editor.prepare(request)
        with pytest.raises(DisablingEditError, match="max_delta_norm"):
            editor.apply(prepared, "r-rome", guard=guard)
    elif entry in ("naive edit", "replay_log"):
        # A second editor of the same model, with make_editor's settings.
        other = (NaiveEditor if entry == "naive edit" else Editor)(
            loaded,
            hparams=editor.hparams,
            templates=TEMPLATES,
            stats=random_spd(key_dim(loaded, LAYER)),
        )
        refused = (
            (lambda: other.edit(request, "r-rome", guard=guard))
            if entry == "naive edit"
            else (lambda: other.replay_log(tmp_path, guard=guard))
        )
        with pytest.raises(DisablingEditError, match="max_delta_norm"):
            refused()
        assert other.log == []
    else:
        with (
            pytest.raises(DisablingEditError, match="max_delta_norm"),
            editor.edited(request, "r-rome", guard=guard),
        ):
            pass
    assert changed_parameters(loaded, before) == []
    assert editor.log == []


def test_covariance_memo_is_keyed_by_layer() -> None:
    """The editor computes C once per layer, and a second layer gets its own C."""
    calls: list[int] = []

    def provider(loaded: LoadedModel, layer: int) -> torch.Tensor:
        calls.append(layer)
        return random_spd(key_dim(loaded, layer), seed=layer)

    loaded, editor = make_editor("tiny-gpt2", stats=provider)
    first = editor.covariance(0).solve(torch.ones(key_dim(loaded, 0)))
    editor.covariance(0)
    second = editor.covariance(1).solve(torch.ones(key_dim(loaded, 1)))
    assert calls == [0, 1]
    assert not torch.equal(first, second)
