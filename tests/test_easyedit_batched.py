"""EasyEdit's MEMIT, EMMET and AlphaEdit under the harness (``rome_fast.conform.easyedit_batched``),
on tiny random GPT-2 and GPT-J: each one's ΔW per layer against our float64 reference on the
keys, targets and outputs it used itself, the key/residual mismatch, EMMET's λₑ on one fact,
and AlphaEdit's module-level state. Findings: docs/results/easyedit-batched.md."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from torch import Tensor

from rome_fast.cli.conform_batch import PROJECTOR_SOURCES as CLI_PROJECTOR_SOURCES
from rome_fast.conform.easyedit_batched import (
    ALPHAEDIT_GLOBALS,
    P_FILE,
    PROJECTOR_SOURCES,
    EasyEditBatched,
    EasyEditInputs,
    ProjectorSource,
)
from rome_fast.conform.public import weight_change
from rome_fast.edit.request import EditRequest
from rome_fast.methods.alphaedit.update import AlphaEditHParams
from rome_fast.methods.emmet.update import EmmetHParams
from rome_fast.methods.memit.update import MemitHParams
from rome_fast.model.loader import LoadedModel
from rome_fast.solve.batch import null_space_basis, projected_factors
from rome_ref.batched import alphaedit_delta, emmet_delta, memit_delta, null_space_projector
from tests.anchors import checkout
from tests.batch_editing import FACTS, low_rank_spd, spd_per_layer
from tests.models import fresh_model, tiny_hparams, weights_of
from tests.public_batched import (
    EPS32,
    LAYERS,
    TEMPLATES,
    check_memit_keys,
    check_packages_put_back,
    edited_weight,
    rounding_ratio,
)

Method = MemitHParams | EmmetHParams | AlphaEditHParams
Stats = Callable[[LoadedModel, int], Tensor]
# λ = 100 lets the batch's keys weigh against C on this scale; AlphaEdit's public threshold
# and L2 (its C with half its spectrum below the threshold, so P is not zero)
CASES: dict[str, tuple[Method, Stats]] = {
    "easyedit-memit": (MemitHParams(LAYERS, mom2_update_weight=100.0), spd_per_layer),
    "easyedit-emmet": (EmmetHParams(LAYERS, mom2_update_weight=100.0), spd_per_layer),
    "easyedit-alphaedit": (AlphaEditHParams(LAYERS), low_rank_spd),
}
FAMILIES = ("tiny-gpt2", "tiny-gptj", "tiny-llama")
# AlphaEdit's float32 error on tiny Llama is 3-7× ours (docs/results/easyedit-batched.md): not
# within the floor below, and no floor that explains it is measured yet
ALPHAEDIT_FAMILIES = ("tiny-gpt2", "tiny-gptj")


@dataclass
class EasyRun:
    """One batch written by one of EasyEdit's editors, with the weights before it."""

    loaded: LoadedModel
    editor: EasyEditBatched
    inputs: EasyEditInputs
    before: dict[str, Tensor]


def easyedit_run(
    spec: str,
    family: str = "tiny-gpt2",
    requests: Sequence[EditRequest] = FACTS[:4],
    *,
    method: Method | None = None,
    editor: EasyEditBatched | None = None,
    loaded: LoadedModel | None = None,
    **state: dict[int, Tensor],
) -> EasyRun:
    """``requests`` edited by ``spec`` (``CASES``' method unless given) on a fresh model (or
    ``loaded``), by a fresh adapter (or ``editor``); ``state``: AlphaEdit's projector or
    key_cache handed in."""
    default, stats = CASES[spec]
    loaded = loaded or fresh_model(family)
    method = method or default
    C = {layer: stats(loaded, layer) for layer in method.layers}
    inputs = EasyEditInputs(
        loaded, requests, TEMPLATES, C, tiny_hparams(family), method, 0, **state
    )
    editor = editor or EasyEditBatched(spec, checkout("easyedit"))
    before = weights_of(loaded)
    editor.edit(inputs)
    return EasyRun(loaded, editor, inputs, before)


@pytest.fixture(scope="module", params=[(s, f) for s in CASES for f in FAMILIES], ids="-".join)
def run(request: pytest.FixtureRequest) -> EasyRun:
    return easyedit_run(*request.param)


def reference_deltas(run: EasyRun) -> list[tuple[int, Tensor]]:
    """Per edited layer: (layer, ΔW (d_out, d_in) float64) of ``rome_ref.batched`` on the K, Z
    and H the code computed itself (AlphaEdit: its P and key cache too), R_l = (Z − H_l)/(L − i)."""
    captured, method = run.editor.captured, run.inputs.method
    deltas = []
    for i, ((layer, K), R) in enumerate(zip(captured.keys, captured.residuals(), strict=False)):
        K64, R64 = K.double().numpy(), R.double().numpy() / (len(method.layers) - i)
        C = run.inputs.C[layer].double().numpy()
        if isinstance(method, MemitHParams):
            delta = memit_delta(C, K64, R64, method.mom2_update_weight)
        elif isinstance(method, EmmetHParams):
            lam = (method.mom2_update_weight, method.emmet_lambda, method.update_norm_lambda)
            delta = emmet_delta(C, K64, R64, *lam)
        else:
            state = run.editor.alphaedit
            assert state is not None
            P = state.projector[i].double().numpy()
            K_p = earlier_keys(state.key_cache_before[i])
            delta = alphaedit_delta(P, K64, R64, method.L2, K_p)
        deltas.append((layer, torch.from_numpy(delta)))
    return deltas


def earlier_keys(cache: Tensor) -> NDArray[np.float64] | None:
    """Kₚ (d_in, m) with Kₚ Kₚᵀ = ``cache`` (AlphaEdit's cache_c at one layer), float64
    NumPy; None for an empty cache."""
    if not cache.any():
        return None
    eigenvalues, eigenvectors = torch.linalg.eigh(cache.double())
    K_p: NDArray[np.float64] = (eigenvectors * eigenvalues.clamp(min=0).sqrt()).numpy()
    return K_p


@pytest.mark.anchors
@pytest.mark.parametrize(
    "run",
    [(s, f) for s in ("easyedit-memit", "easyedit-emmet") for f in FAMILIES],
    indirect=True,
    ids="-".join,
)
def test_memit_and_emmet_delta_is_the_reference_on_their_own_keys_and_targets(
    run: EasyRun,
) -> None:
    """MEMIT ``memit_main.py:212-217`` and EMMET ``emmet_main.py:216-235`` solve in float64
    (EMMET through explicit inverses of C' and D), cast ΔW to float32 and add it to the
    float32 W0: two roundings (``public_batched.rounding_ratio``). Measured (2 model seeds ×
    tiny GPT-2, GPT-J and Llama × MEMIT λ 100, 15000 × EMMET λₘ 100, 10000 × 2 layers): at most
    0.9992 of that bound; the margin 1.05 covers the two float64 solves' difference (κ ε₆₄)."""
    deltas = reference_deltas(run)
    assert [layer for layer, _ in deltas] == list(LAYERS)
    for layer, reference in deltas:
        W1 = edited_weight(run.loaded, layer)
        worst = rounding_ratio(W1, weight_change(run.loaded, run.before, layer), reference)
        assert worst <= 1.05, f"layer {layer}: ΔW off the reference by {worst:.3g}× rounding"


@pytest.mark.anchors
@pytest.mark.parametrize(
    "run", [("easyedit-alphaedit", f) for f in ALPHAEDIT_FAMILIES], indirect=True, ids="-".join
)
def test_alphaedit_delta_is_the_reference_at_the_float32_floor(run: EasyRun) -> None:
    """AlphaEdit solves in float32 (``AlphaEdit_main.py:229-237``), so its floor is a correct
    float32 solve's: ours (``solve.batch.projected_factors``, in the basis of the code's P) on
    the same float32 K and R, against the float64 reference, plus the storage rounding of
    ``W0 + ΔW``. Measured (2 model seeds × tiny GPT-2 and GPT-J × 2 layers): the code's
    largest error reaches 0.98 of ours alone; the margin 2 covers the two solves' different
    orders of operations. The P it computed (float32 SVD of C, ``AlphaEdit_main.py:366-370``)
    is the reference projector to 7.4e-7 (ours, float32 eigh: the same order)."""
    check_alphaedit_delta(run)
    state, method = run.editor.alphaedit, run.inputs.method
    assert state is not None
    assert isinstance(method, AlphaEditHParams)
    for i, layer in enumerate(LAYERS):
        C = run.inputs.C[layer]
        P_ref = torch.from_numpy(
            null_space_projector(C.double().numpy(), method.nullspace_threshold)
        )
        ours = null_space_basis(C, method.nullspace_threshold)
        P_floor = ((ours @ ours.mT).double() - P_ref).abs().max().item()
        assert (state.projector[i].double() - P_ref).abs().max().item() <= 2 * P_floor


def check_alphaedit_delta(run: EasyRun) -> None:
    """AlphaEdit's ΔW per layer is the reference's within 2 × the floor of a correct float32
    solve (see the test below)."""
    state, method = run.editor.alphaedit, run.inputs.method
    assert state is not None
    assert isinstance(method, AlphaEditHParams)
    captured = run.editor.captured
    solved = zip(reference_deltas(run), captured.keys, captured.residuals(), strict=False)
    for i, ((layer, reference), (_, K), R) in enumerate(solved):
        U = null_space_basis(torch.eye(K.shape[0]) - state.projector[i], 0.5)  # P's range
        earlier = U.mT @ state.key_cache_before[i] @ U  # (r, r)
        ours, _ = projected_factors(U, K, R / (len(LAYERS) - i), method.L2, earlier)
        floor = ((ours.left @ ours.right.mT).double() - reference).abs().max().item()
        W1 = edited_weight(run.loaded, layer)
        floor += (EPS32 / 2 * (W1.abs() + reference.abs())).max().item()
        error = (weight_change(run.loaded, run.before, layer) - reference).abs().max().item()
        assert error <= 2 * floor, f"layer {layer}: ΔW off the reference by {error / floor:.3g}×"


@pytest.mark.anchors
def test_keys_are_half_bare_half_prefix_mean_and_residuals_bare(run: EasyRun) -> None:
    """SPEC §7's mismatch, confirmed in all three: keys by ``compute_ks.py:44-49`` (each
    folder's), residuals at the bare prompts (``memit_main.py:173-182``,
    ``emmet_main.py:176-180``, ``AlphaEdit_main.py:213-221``)."""
    check_memit_keys(
        run.loaded.name.removeprefix("random:"), list(run.inputs.requests), run.editor.captured
    )


@pytest.mark.anchors
def test_emmet_adds_lambda_e_even_for_one_fact() -> None:
    """EasyEdit adds λₑI to D whatever the batch size (``emmet_main.py:228``); the authors add it
    only for batches of more than one fact, so that one fact is inserted exactly (r-ROME's
    update). On one fact with the GPT2-XL file's λₘ = 10000, λₑ = 0.1 at one layer: ΔW is
    ``emmet_delta`` with λₑ = 0.1 (within the rounding bound of the delta test) and far from
    λₑ = 0; the share of the residual left at the key is λₑ/(kᵀC'⁻¹k + λₑ), as the closed
    form says."""
    method = EmmetHParams((LAYERS[-1],), mom2_update_weight=10000.0, emmet_lambda=0.1)
    run = easyedit_run("easyedit-emmet", requests=FACTS[:1], method=method)
    (layer, K), R = run.editor.captured.keys[0], run.editor.captured.residuals()[0]
    C = run.inputs.C[layer].double().numpy()
    K64, R64 = K.double().numpy(), R.double().numpy()
    W1, delta = edited_weight(run.loaded, layer), weight_change(run.loaded, run.before, layer)
    with_lambda = torch.from_numpy(emmet_delta(C, K64, R64, 10000.0, 0.1))
    exact = torch.from_numpy(emmet_delta(C, K64, R64, 10000.0, 0.0))
    assert rounding_ratio(W1, delta, with_lambda) <= 1.05
    assert rounding_ratio(W1, delta, exact) > 1e3
    k, r = K.double()[:, 0], R.double()[:, 0]
    quad = (k @ torch.linalg.solve(10000.0 * run.inputs.C[layer].double(), k)).item()
    left = ((r - delta @ k).norm() / r.norm()).item()  # measured 0.998 (kᵀC'⁻¹k = 1.6e-4)
    # the stored weights' rounding at the key bounds how far ``left`` can be from the closed form
    rounding = (EPS32 / 2 * (W1.abs() + with_lambda.abs()) @ k.abs()).norm() / r.norm()
    assert left == pytest.approx(0.1 / (quad + 0.1), abs=rounding.item())


def alphaedit_delta_at(run: EasyRun) -> list[Tensor]:
    """The ΔW AlphaEdit wrote at each edited layer, (d_out, d_in) float64."""
    return [weight_change(run.loaded, run.before, layer) for layer in LAYERS]


@pytest.mark.anchors
@pytest.mark.parametrize(
    ("family", "model_name", "missing"),
    [("tiny-gptj", "./hugging_cache/gpt-j-6B", "cache_c"), ("tiny-gpt2", "gpt2", "P")],
)
def test_alphaedit_state_is_set_up_only_for_some_model_names(
    family: str, model_name: str, missing: str
) -> None:
    """``AlphaEdit_main.py:64-71`` builds P for names holding llama, qwen, gpt-j-6b or gpt2-xl,
    ``:85-88`` the key cache only for llama, qwen or gpt2-xl: in a fresh process, the GPT-J
    yaml's own ``model_name`` fails on ``cache_c`` and any other name (gpt2, mistral, ...) on
    ``P`` (in a process where an earlier edit set them, it silently reuses those instead)."""
    loaded = fresh_model(family)
    before = weights_of(loaded)
    editor = EasyEditBatched("easyedit-alphaedit", checkout("easyedit"), model_name=model_name)
    with pytest.raises(NameError, match=f"'{missing}' is not defined"):
        easyedit_run("easyedit-alphaedit", family, editor=editor, loaded=loaded)
    assert all(torch.equal(w, before[name]) for name, w in weights_of(loaded).items())


@pytest.mark.anchors
def test_alphaedit_key_cache_leaks_into_an_independent_edit() -> None:
    """EasyEdit's editor calls ``apply_AlphaEdit_to_model`` again and again in one process; the
    key cache ``cache_c`` is a module global (``AlphaEdit_main.py:48, 83-90``) that each edit
    adds its keys to (``:261-263``) and nothing resets but ``reset_cache=True``: reverting
    batch A's weights and editing batch B as a new, independent edit, B is solved with A's
    keys as earlier edits. Measured on tiny GPT-2 (facts 0-1, then 2-3): ‖ΔW_B − ΔW_B
    fresh‖/‖ΔW_B fresh‖ = 0.014 and 0.022 at layers 1 and 2, against a float32 floor of at
    most 1.9e-6 of max|ΔW| (16 ε₃₂, the delta test's ours). The same B with A's key cache
    handed in explicitly (what a sequential edit means) is bit-identical to the leaked one."""
    editor = EasyEditBatched("easyedit-alphaedit", checkout("easyedit"), isolate_state=False)
    first = easyedit_run("easyedit-alphaedit", requests=FACTS[:2], editor=editor)
    assert first.editor.alphaedit is not None
    cache_after_A = first.editor.alphaedit.key_cache_after
    editor.revert()
    leaked = easyedit_run(
        "easyedit-alphaedit", requests=FACTS[2:4], editor=editor, loaded=first.loaded
    )
    assert leaked.editor.alphaedit is not None
    assert torch.equal(leaked.editor.alphaedit.key_cache_before, cache_after_A)
    assert cache_after_A.any()
    check_alphaedit_delta(leaked)  # A's keys as the reference's earlier ones (Kₚ)
    fresh = easyedit_run("easyedit-alphaedit", requests=FACTS[2:4])
    handed = easyedit_run(
        "easyedit-alphaedit",
        requests=FACTS[2:4],
        key_cache=dict(zip(LAYERS, cache_after_A, strict=True)),
    )
    for layer, leak, alone, sequential in zip(
        LAYERS,
        alphaedit_delta_at(leaked),
        alphaedit_delta_at(fresh),
        alphaedit_delta_at(handed),
        strict=True,
    ):
        assert ((leak - alone).norm() / alone.norm()).item() > 100 * 16 * EPS32, layer
        assert torch.equal(leak, sequential)


@pytest.mark.anchors
def test_alphaedit_runs_leave_no_file_and_no_global(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code saves its projector as ``null_space_project.pt`` in the working directory
    (``AlphaEdit_main.py:75``, whatever ``P_loc`` says) and keeps P and the key cache in module
    globals (``:24-25, 48``). The adapter runs it in a temporary directory, removed after, and
    each edit from the globals a fresh import has: the file was written there and is gone,
    nothing is left in the caller's directory, the globals are as before each edit, and two
    edits by one adapter are each what a fresh adapter writes."""
    monkeypatch.chdir(tmp_path)
    editor = EasyEditBatched("easyedit-alphaedit", checkout("easyedit"))
    state = {name: vars(editor.main).get(name) for name in ALPHAEDIT_GLOBALS}
    first = easyedit_run("easyedit-alphaedit", requests=FACTS[:2], editor=editor)
    assert editor.written == [P_FILE]
    assert editor.workdir is not None
    assert not editor.workdir.exists()
    assert list(tmp_path.iterdir()) == []
    assert {name: vars(editor.main).get(name) for name in ALPHAEDIT_GLOBALS} == state
    editor.revert()
    second = easyedit_run(
        "easyedit-alphaedit", requests=FACTS[2:4], editor=editor, loaded=first.loaded
    )
    alone = easyedit_run("easyedit-alphaedit", requests=FACTS[2:4])
    for ours, theirs in zip(alphaedit_delta_at(second), alphaedit_delta_at(alone), strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.anchors
def test_alphaedit_solves_with_the_projector_and_key_cache_handed_in() -> None:
    """What the harness hands in is what the solve reads (captured as it reads it): the
    reference projector (float64 eigh, not the code's float32 SVD) and a key cache."""
    loaded = fresh_model("tiny-gpt2")
    threshold = AlphaEditHParams().nullspace_threshold
    projector = {
        layer: torch.from_numpy(
            null_space_projector(low_rank_spd(loaded, layer).double().numpy(), threshold)
        ).float()
        for layer in LAYERS
    }
    cache = {layer: low_rank_spd(loaded, layer) for layer in LAYERS}  # any PSD (d_in, d_in)
    run = easyedit_run("easyedit-alphaedit", loaded=loaded, projector=projector, key_cache=cache)
    state = run.editor.alphaedit
    assert state is not None
    assert torch.equal(state.projector, torch.stack([projector[layer] for layer in LAYERS]))
    assert torch.equal(state.key_cache_before, torch.stack([cache[layer] for layer in LAYERS]))


@pytest.mark.anchors
def test_alphaedit_solves_with_the_reference_projector_when_asked_for_float64() -> None:
    """``projector_from="float64"``: the P its solve reads is the reference's from the same C
    (float64 eigh, stored in float32), not the code's own float32 SVD, which differs from it."""
    loaded = fresh_model("tiny-gpt2")
    threshold = AlphaEditHParams().nullspace_threshold
    wanted = torch.stack(
        [
            torch.from_numpy(
                null_space_projector(low_rank_spd(loaded, layer).double().numpy(), threshold)
            ).float()
            for layer in LAYERS
        ]
    )
    code = EasyEditBatched("easyedit-alphaedit", checkout("easyedit"), projector_from="float64")
    handed, own = (
        easyedit_run("easyedit-alphaedit", loaded=loaded, editor=editor).editor.alphaedit
        for editor in (code, EasyEditBatched("easyedit-alphaedit", checkout("easyedit")))
    )
    assert handed is not None
    assert own is not None
    assert torch.equal(handed.projector, wanted)
    assert not torch.equal(own.projector, wanted)


@pytest.mark.anchors
@pytest.mark.parametrize(
    ("spec", "source", "message"),
    [
        ("easyedit-memit", "float64", "easyedit-memit has no projector"),
        ("easyedit-alphaedit", "float32", "unknown projector source 'float32'"),
    ],
)
def test_a_projector_it_cannot_take_is_refused_by_name(
    spec: str, source: ProjectorSource, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        EasyEditBatched(spec, checkout("easyedit"), projector_from=source)


def test_the_command_line_offers_the_adapters_projector_sources() -> None:
    assert PROJECTOR_SOURCES == CLI_PROJECTOR_SOURCES


@pytest.mark.anchors
@pytest.mark.parametrize("spec", list(CASES))
def test_edit_writes_only_its_layers_and_reverts_bit_identical(spec: str) -> None:
    run = easyedit_run(spec)
    after = weights_of(run.loaded)
    changed = {name for name, w in after.items() if not torch.equal(w, run.before[name])}
    sites = [run.loaded.adapter.edited_site(run.loaded.model, layer) for layer in LAYERS]
    assert changed == {f"{site.module_name}.weight" for site in sites}
    for layer in LAYERS:  # the ΔW the adapter reports is what the weights show
        delta = weight_change(run.loaded, run.before, layer)
        assert torch.equal(run.editor.captured.deltas[layer], delta)
    run.editor.revert()
    assert all(torch.equal(w, run.before[name]) for name, w in weights_of(run.loaded).items())


@pytest.mark.anchors
@pytest.mark.parametrize(
    ("spec", "method", "state", "message"),
    [
        ("easyedit-memit", EmmetHParams(LAYERS), {}, "takes MemitHParams, not EmmetHParams"),
        ("easyedit-emmet", MemitHParams((*LAYERS, 3)), {}, "takes EmmetHParams"),
        ("easyedit-memit", MemitHParams((*LAYERS, 3)), {}, r"no C for edited layers \[3\]"),
        ("easyedit-emmet", EmmetHParams(LAYERS), {"key_cache": {}}, "keeps no key_cache"),
    ],
)
def test_inputs_it_cannot_take_are_refused_by_name(
    spec: str, method: Method, state: dict[str, dict[int, Tensor]], message: str
) -> None:
    loaded = fresh_model("tiny-gpt2")
    before = weights_of(loaded)
    C = {layer: spd_per_layer(loaded, layer) for layer in LAYERS}
    inputs = EasyEditInputs(
        loaded, FACTS[:2], TEMPLATES, C, tiny_hparams("tiny-gpt2"), method, 0, **state
    )
    with pytest.raises(ValueError, match=message):
        EasyEditBatched(spec, checkout("easyedit")).edit(inputs)
    assert all(torch.equal(w, before[name]) for name, w in weights_of(loaded).items())


@pytest.mark.anchors
def test_easyeditor_imports_are_the_adapters_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each adapter imports ``easyeditor`` afresh (its own module globals), and whatever held
    the name before (the ROME adapters' import) holds it after."""
    check_packages_put_back(
        monkeypatch,
        ("easyeditor", "easyeditor.models"),
        lambda: EasyEditBatched("easyedit-alphaedit", checkout("easyedit")),
    )
