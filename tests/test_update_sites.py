"""Updates of several sites and any rank through the editor: atomic apply, exact revert and
restore with overlapping sites, the guard per site, the log; and logs of the version-1 format
(one rank-one pair per edit) still read and replayed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rome_fast.edit.editor as editor_module
from rome_fast.edit.editor import Editor
from rome_fast.edit.guard import DisablingEditError, Guard
from rome_fast.edit.log import read_log
from rome_fast.edit.prepared import KeysLike, ValueLike
from rome_fast.edit.request import EditRequest, normalized_delta_norm
from rome_fast.methods.rome.variants import RegisteredVariant
from rome_fast.model.loader import LoadedModel
from rome_fast.model.weights import apply_factors, apply_rank_one
from rome_fast.solve.low_rank import Factors, SiteUpdate, Update
from rome_fast.solve.rank_one import RankOne
from tests.models import (
    REQUEST,
    TEMPLATES,
    changed_parameters,
    fresh_model,
    key_dim,
    random_spd,
    tiny_hparams,
    weights_of,
)

FAMILY = "tiny-gpt2"
V1_LOG = Path(__file__).resolve().parents[1] / "fixtures" / "edit-log-v1"


class HandMadeEditor(Editor):
    """The editor with its update replaced by the given ones, in turn (keys, v* and the rest of
    the edit path as usual)."""

    def __init__(self, loaded: LoadedModel, updates: Sequence[Update]) -> None:
        super().__init__(
            loaded,
            hparams=tiny_hparams(FAMILY),
            templates=TEMPLATES,
            stats=random_spd(key_dim(loaded, 1)),
        )
        self._queue = list(updates)

    def _compute_update(
        self, _keys: KeysLike, _value: ValueLike, _variant: RegisteredVariant
    ) -> tuple[Update, float]:
        return self._queue.pop(0), 1.0


def update_at(loaded: LoadedModel, layers: Sequence[int], seed: int, rank: int = 2) -> Update:
    """Random rank-``rank`` factors at ``layers``, seeded, scaled like a real edit's |ΔW|."""
    g = torch.Generator().manual_seed(seed)
    sites = []
    for layer in layers:
        site = loaded.adapter.edited_site(loaded.model, layer)
        left = torch.randn(site.d_out, rank, generator=g) * 0.1  # (d_out, r)
        right = torch.randn(site.d_in, rank, generator=g) * 0.1  # (d_in, r)
        sites.append(SiteUpdate(layer, site.module_name, Factors(left, right)))
    return Update(tuple(sites))


def written(updates: Sequence[Update]) -> dict[str, torch.Tensor]:
    """A fresh model's parameters after writing ``updates`` in order, site by site."""
    loaded = fresh_model(FAMILY)
    for update in updates:
        for site in update:
            apply_factors(loaded.model.get_submodule(site.module_name), site.factors)
    return weights_of(loaded)


@pytest.fixture
def overlapping() -> tuple[LoadedModel, HandMadeEditor, list[Update]]:
    """Four two-site updates at layers (1, 2), (2, 3), (1, 3), (1, 2): every site is written
    by two or three of them, so order and rebuilding matter bit for bit."""
    loaded = fresh_model(FAMILY)
    updates = [
        update_at(loaded, layers, seed)
        for seed, layers in enumerate(((1, 2), (2, 3), (1, 3), (1, 2)))
    ]
    return loaded, HandMadeEditor(loaded, updates), updates


def test_a_two_site_rank_two_update_applies_and_reverts_exactly(
    overlapping: tuple[LoadedModel, HandMadeEditor, list[Update]],
) -> None:
    loaded, editor, updates = overlapping
    results = [editor.edit(EditRequest(*REQUEST)) for _ in range(4)]
    assert changed_parameters(loaded, written(updates)) == []
    record = results[0].as_record()
    assert [(s["layer"], s["rank"]) for s in record["sites"]] == [(1, 2), (2, 2)]
    assert "layer" not in record, "a two-site record must not name one layer"
    editor.revert(results[3])  # the latest: the saved copies of both sites
    assert changed_parameters(loaded, written(updates[:3])) == []


def test_reverting_an_older_multi_site_edit_is_bit_identical_to_never_applying_it(
    overlapping: tuple[LoadedModel, HandMadeEditor, list[Update]],
) -> None:
    loaded, editor, (_, *rest) = overlapping
    w0 = weights_of(loaded)
    results = [editor.edit(EditRequest(*REQUEST)) for _ in range(4)]
    # An older edit: both its sites rebuilt from W0, each with two remaining edits in order.
    editor.revert(results[0])
    assert changed_parameters(loaded, written(rest)) == []
    editor.revert(results[1])
    assert changed_parameters(loaded, written(rest[1:])) == []
    editor.restore()
    assert changed_parameters(loaded, w0) == []


def test_restore_after_overlapping_multi_site_edits_gives_w0(
    overlapping: tuple[LoadedModel, HandMadeEditor, list[Update]],
) -> None:
    loaded, editor, _ = overlapping
    w0 = weights_of(loaded)
    for _ in range(4):
        editor.edit(EditRequest(*REQUEST))
    editor.restore()
    assert changed_parameters(loaded, w0) == []


def test_a_failure_writing_the_second_site_leaves_the_first_unwritten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loaded = fresh_model(FAMILY)
    editor = HandMadeEditor(loaded, [update_at(loaded, (1, 2), 0)])
    before = weights_of(loaded)
    calls = []

    def fail_on_the_second(module: torch.nn.Module, factors: Factors, sign: float = 1.0) -> None:
        calls.append(module)
        if len(calls) == 2:
            raise RuntimeError("injected failure at the second site")
        apply_factors(module, factors, sign=sign)

    monkeypatch.setattr(editor_module, "apply_factors", fail_on_the_second)
    with pytest.raises(RuntimeError, match="second site"):
        editor.edit(EditRequest(*REQUEST))
    assert len(calls) == 2
    assert changed_parameters(loaded, before) == []
    assert editor.log == []


def test_the_guard_refuses_the_whole_update_naming_the_site_over_the_bound() -> None:
    loaded = fresh_model(FAMILY)
    update = update_at(loaded, (1, 2), 0)
    big = update.sites[1]
    scaled = SiteUpdate(
        big.layer, big.module_name, Factors(big.factors.left * 1e3, big.factors.right)
    )
    update = Update((update.sites[0], scaled))
    small_norm = normalized_delta_norm(update.sites[0].factors)
    editor = HandMadeEditor(loaded, [update])
    before = weights_of(loaded)
    with pytest.raises(DisablingEditError, match=big.module_name) as info:
        editor.edit(EditRequest(*REQUEST), guard=Guard(max_delta_norm=2 * small_norm))
    assert update.sites[0].module_name not in str(info.value)
    assert changed_parameters(loaded, before) == []


def test_a_multi_site_log_replays_bit_identically(tmp_path: Path) -> None:
    loaded = fresh_model(FAMILY)
    updates = [update_at(loaded, layers, seed) for seed, layers in enumerate(((1, 2), (2, 3)))]
    editor = HandMadeEditor(loaded, updates)
    for _ in updates:
        editor.edit(EditRequest(*REQUEST))
    editor.save_log(tmp_path)
    replayed = fresh_model(FAMILY)
    results = HandMadeEditor(replayed, []).replay_log(tmp_path)
    assert changed_parameters(replayed, weights_of(loaded)) == []
    assert [r.as_record()["sites"] for r in results] == [r.as_record()["sites"] for r in editor.log]


def test_a_version_1_log_is_read_and_replayed() -> None:
    """The fixture was written by the editor before per-site updates (one rank-one pair per
    edit); the replay must equal its raw factors applied by hand, and its records survive."""
    meta = json.loads((V1_LOG / "edits.json").read_text())
    raw = load_file(str(V1_LOG / "factors.safetensors"))
    assert meta["version"] == 1
    results = read_log(V1_LOG)
    expected = fresh_model(FAMILY)
    for i, (result, entry) in enumerate(zip(results, meta["edits"], strict=True)):
        (site,) = result.update.sites
        assert (site.layer, site.module_name) == (entry["layer"], entry["module_name"])
        assert torch.equal(site.factors.left[:, 0], raw[f"edit{i}.left"])
        assert torch.equal(site.factors.right[:, 0], raw[f"edit{i}.right"])
        record = result.as_record()
        for key in ("delta_norm", "denominator", "variant", "layer", "module_name"):
            assert record[key] == entry[key], key
        one = RankOne(raw[f"edit{i}.left"], raw[f"edit{i}.right"], torch.ones(()))
        apply_rank_one(expected.model.get_submodule(entry["module_name"]), one)
    replayed = fresh_model(FAMILY)
    HandMadeEditor(replayed, []).replay_log(V1_LOG)
    assert changed_parameters(replayed, weights_of(expected)) == []


@pytest.mark.parametrize("rank", [1, 2, 5])
def test_a_sites_delta_norm_is_the_dense_one(rank: int) -> None:
    """|Δ| from the factors (no dense ΔW) equals ‖ΔW‖_F / numel of the dense float64 product.

    Measured on these shapes over 20 seeds per rank: relative differences up to 2.3e-7 (float32
    norms and Gram products); the bound allows 4× that."""
    loaded = fresh_model(FAMILY)
    (site,) = update_at(loaded, (1,), seed=rank, rank=rank).sites
    factors = site.factors
    dense = factors.left.double() @ factors.right.double().T
    expected = float(dense.norm()) / dense.numel()
    assert normalized_delta_norm(factors) == pytest.approx(expected, rel=1e-6)
