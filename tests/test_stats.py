"""Key statistics C = E[k kᵀ]: streaming collection, padding, stopping, cache and npz format."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from rome_fast.edit.editor import Editor
from rome_fast.edit.ownership import stored_weight
from rome_fast.hparams.defaults import hparams_for
from rome_fast.infra.datadir import CACHE_ENV
from rome_fast.model.hooks import capture
from rome_fast.model.loader import LoadedModel, load_model
from rome_fast.model.weights import weight_matrix
from rome_fast.solve.rank_one import CovarianceFactor
from rome_fast.stats import collect as stats
from rome_fast.stats.corpus import Corpus, from_texts
from rome_fast.stats.covariance import StatsSource, default_covariance
from tests.models import key_dim

LAYER = 1
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven")


def varied_texts(n: int) -> list[str]:
    """Documents of clearly different lengths (1 to 4n+1 words), so batches need padding."""
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(4 * i + 1)) for i in range(n)]


@pytest.fixture(scope="module", params=["random:tiny-gpt2", "random:tiny-llama"])
def loaded(request: pytest.FixtureRequest) -> LoadedModel:
    return load_model(request.param)


@pytest.fixture(scope="module")
def gpt2() -> LoadedModel:
    return load_model("random:tiny-gpt2")


@pytest.fixture
def corpus() -> Corpus:
    return from_texts(varied_texts(11))


@contextmanager
def padding_side(loaded: LoadedModel, side: str) -> Iterator[None]:
    saved = loaded.tokenizer.padding_side
    loaded.tokenizer.padding_side = side
    try:
        yield
    finally:
        loaded.tokenizer.padding_side = saved


@contextmanager
def call_counter(modules: list[nn.Module]) -> Iterator[list[int]]:
    calls = [0]

    def hook(*_: object) -> None:
        calls[0] += 1

    # A pre-hook: the stopped module raises before its own forward hooks would run.
    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def reference_sum(loaded: LoadedModel, layer: int, texts: list[str], max_length: int) -> Tensor:
    """Σ k kᵀ in float64, one unpadded document at a time with a full forward pass."""
    module = loaded.adapter.edited_module(loaded.model, layer)
    total = torch.zeros((), dtype=torch.float64)
    for text in texts:
        ids = loaded.tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")[
            "input_ids"
        ]
        with torch.no_grad(), capture(module) as seen:
            loaded.model(input_ids=ids)
        assert seen.input is not None
        keys = seen.input[0].double()  # (seq, d_in)
        total = total + keys.T @ keys
    return total


def reference_count(loaded: LoadedModel, texts: list[str], max_length: int) -> int:
    return sum(
        len(loaded.tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts
    )


def assert_close(actual: Tensor, expected: Tensor, what: str, rtol: float = 1e-5) -> None:
    scale = expected.abs().max().item()
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= rtol * scale, f"{what}: max |error| {err:.3g} > {rtol:g} · max |C| {scale:.3g}"


def collect(loaded: LoadedModel, corpus: Corpus, **kwargs: Any) -> stats.SecondMomentStats:
    options: dict[str, Any] = {
        "n_samples": 1000,
        "batch_size": 4,
        "max_length": 64,
        "progress": False,
    }
    options.update(kwargs)
    return stats.collect_second_moment(loaded, LAYER, corpus, **options)


def test_streamed_sum_equals_direct_computation(loaded: LoadedModel) -> None:
    texts = varied_texts(11)
    got = collect(loaded, from_texts(texts), max_length=24)  # truncates the longer documents
    assert got.count == reference_count(loaded, texts, 24)
    assert_close(
        got.sum,
        reference_sum(loaded, LAYER, texts, 24),
        f"{loaded.name}: streamed Σkkᵀ vs. per-document full forward",
    )


def test_mean_is_sum_over_token_count(gpt2: LoadedModel, corpus: Corpus, tmp_path: Path) -> None:
    C = stats.layer_second_moment(
        gpt2,
        LAYER,
        corpus=corpus,
        n_samples=1000,
        max_length=64,
        stats_dir=tmp_path,
        progress=False,
    )
    raw = collect(gpt2, corpus)
    assert_close(C, raw.sum / raw.count, "layer_second_moment vs. Σkkᵀ / count")


def test_left_and_right_padding_give_the_same_C(loaded: LoadedModel, corpus: Corpus) -> None:
    with padding_side(loaded, "right"):
        right = collect(loaded, corpus)
    with padding_side(loaded, "left"):
        left = collect(loaded, corpus)
    assert left.count == right.count
    assert_close(left.sum, right.sum, f"{loaded.name}: left vs. right padding")


def test_batch_size_does_not_change_C(loaded: LoadedModel, corpus: Corpus) -> None:
    one = collect(loaded, corpus, batch_size=1)  # no padding at all
    many = collect(loaded, corpus, batch_size=5)
    assert one.count == many.count
    assert_close(many.sum, one.sum, f"{loaded.name}: batch size 5 vs. 1")


def test_n_samples_takes_the_first_documents(gpt2: LoadedModel) -> None:
    texts = varied_texts(9)
    got = collect(gpt2, from_texts(texts), n_samples=4)
    assert got.sample_size == 4
    assert got.provenance["documents"] == 4
    assert_close(got.sum, reference_sum(gpt2, LAYER, texts[:4], 64), "first 4 documents")


def test_float64_accumulation(gpt2: LoadedModel, corpus: Corpus) -> None:
    got = collect(gpt2, corpus, dtype=torch.float64)
    assert got.sum.dtype == torch.float64
    assert_close(got.sum, reference_sum(gpt2, LAYER, varied_texts(11), 64), "float64 Σkkᵀ")


def test_forward_stops_at_the_edited_module(loaded: LoadedModel, corpus: Corpus) -> None:
    model, adapter = loaded.model, loaded.adapter
    above = list(adapter.layers(model))[LAYER + 1 :]
    above.append(model.get_submodule(adapter.final_norm_path))
    at = [adapter.edited_module(model, LAYER)]
    with call_counter(above) as calls_above, call_counter(at) as calls_at:
        collect(loaded, corpus, batch_size=4)
    assert calls_above[0] == 0, "a block above the edited layer ran"
    assert calls_at[0] == 3, "expected one stopped forward per batch (11 documents, batch 4)"


def test_empty_documents_are_skipped_and_counted(gpt2: LoadedModel) -> None:
    got = collect(gpt2, from_texts(["", *varied_texts(3), ""]))
    assert got.provenance["empty_documents_skipped"] == 2
    assert got.count == reference_count(gpt2, varied_texts(3), 64)


def test_bad_dtype_is_rejected(gpt2: LoadedModel, corpus: Corpus) -> None:
    with pytest.raises(ValueError, match=r"float32 or torch\.float64"):
        collect(gpt2, corpus, dtype=torch.float16)


# ----------------------------------------------------------------------------- npz format


def random_stats(d: int, seed: int = 0) -> stats.SecondMomentStats:
    keys = torch.randn(50, d, generator=torch.Generator().manual_seed(seed))
    return stats.SecondMomentStats(keys.T @ keys, 50, 7, {"corpus": "test", "tokens": 50})


def test_npz_round_trip(tmp_path: Path) -> None:
    original = random_stats(6)
    path = stats.save_npz_stats(original, tmp_path / "sub" / "s.npz")
    back = stats.load_npz_stats(path)
    assert torch.equal(back.sum, original.sum)
    assert (back.count, back.sample_size) == (original.count, original.sample_size)
    assert back.provenance["corpus"] == "test"
    assert list(tmp_path.joinpath("sub").iterdir()) == [path], "a temporary file was left behind"


def test_written_file_has_the_public_keys(tmp_path: Path) -> None:
    path = stats.save_npz_stats(random_stats(4), tmp_path / "s.npz")
    with np.load(path, allow_pickle=False) as data:
        assert {"mom2.mom2", "mom2.count", "mom2.constructor", "sample_size"} <= set(data.files)
        assert str(data["mom2.constructor"]) == "util.runningstats.SecondMoment()"
        assert int(data["mom2.count"]) == 50


def write_public_file(path: Path, mom2: np.ndarray, count: int, sample_size: int) -> None:
    """What the public code's SecondMoment + tally cache writes (np.savez of its state dict)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {  # keys with dots: passed as a mapping
        "mom2.constructor": "util.runningstats.SecondMoment()",
        "mom2.count": count,
        "mom2.mom2": mom2,
        "sample_size": sample_size,
    }
    np.savez(path, **state)


def test_public_layout_file_is_used_without_running_the_model(
    gpt2: LoadedModel, tmp_path: Path
) -> None:
    d_in = key_dim(gpt2, LAYER)
    keys = np.random.default_rng(0).standard_normal((300, d_in)).astype(np.float32)
    path = stats.public_stats_path(
        tmp_path, gpt2.name, "transformer.h.1.mlp.c_proj", torch.float32, 100_000
    )
    assert path.relative_to(tmp_path).as_posix() == (
        "random:tiny-gpt2/wikipedia_stats/transformer.h.1.mlp.c_proj_float32_mom2_100000.npz"
    )
    write_public_file(path, keys.T @ keys, 300, 100_000)
    with call_counter([gpt2.model.get_submodule("transformer.wte")]) as calls:
        C = stats.layer_second_moment(gpt2, LAYER, stats_dir=tmp_path, progress=False)
    assert calls[0] == 0, "the model ran although the user's file was there"
    assert_close(C, torch.from_numpy(keys.T @ keys / 300), "C read from a public-layout file")


def test_wrong_shape_npz_names_the_expected_d_in(gpt2: LoadedModel, tmp_path: Path) -> None:
    path = stats.save_npz_stats(random_stats(10), tmp_path / "other.npz")
    d_in = key_dim(gpt2, LAYER)
    with pytest.raises(ValueError, match=rf"10×10.*d_in = {d_in}"):
        stats.layer_second_moment(gpt2, LAYER, npz_path=path)


def test_npz_without_mom2_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, something=np.zeros(3))
    with pytest.raises(ValueError, match=r"lacks mom2\.mom2"):
        stats.load_npz_stats(path)


# ----------------------------------------------------------------------------- cache


def test_cache_hit_does_not_run_the_model(
    gpt2: LoadedModel, corpus: Corpus, tmp_path: Path
) -> None:
    options: dict[str, Any] = {
        "corpus": corpus,
        "n_samples": 1000,
        "max_length": 64,
        "stats_dir": tmp_path,
        "progress": False,
    }
    first = stats.layer_second_moment(gpt2, LAYER, **options)
    with call_counter([gpt2.model.get_submodule("transformer.wte")]) as calls:
        second = stats.layer_second_moment(gpt2, LAYER, **options)
    assert calls[0] == 0, "the second call ran the model instead of reading the cache"
    assert torch.equal(first, second)


def test_cache_key_changes_with_every_input(
    gpt2: LoadedModel, corpus: Corpus, tmp_path: Path
) -> None:
    base: dict[str, Any] = {
        "layer": LAYER,
        "corpus": corpus,
        "n_samples": 100,
        "dtype": torch.float32,
        "max_length": 64,
    }
    changes = {
        "layer": 2,
        "corpus": from_texts(["another text"]),
        "n_samples": 101,
        "dtype": torch.float64,
        "max_length": 65,
    }

    def path(**kw: Any) -> Path:
        args = {**base, **kw}
        return stats.cache_path(gpt2, stats_dir=tmp_path, **args)

    assert path() == path()
    for name, value in changes.items():
        assert path(**{name: value}) != path(), f"cache key ignores {name}"


def test_cache_key_follows_the_weights_below_the_edited_module(gpt2: LoadedModel) -> None:
    before = stats.model_fingerprint(gpt2, LAYER)
    edited = weight_matrix(gpt2.adapter.edited_module(gpt2.model, LAYER))
    embedding = stored_weight(gpt2.model.get_submodule("transformer.wte"))
    with torch.no_grad():
        edited[0, 0] += 1.0  # an edit of the layer itself keeps its keys
        assert stats.model_fingerprint(gpt2, LAYER) == before
        embedding[0, 0] += 1.0  # a change below the layer changes them
        after = stats.model_fingerprint(gpt2, LAYER)
        edited[0, 0] -= 1.0
        embedding[0, 0] -= 1.0
    assert after != before


def test_one_provider_gives_each_layer_its_own_C(
    gpt2: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider (and the editor that holds it) asked for two layers, in turn and again,
    returns each layer's own C: anything it remembers is keyed by the layer."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    hparams = hparams_for(gpt2.name).replace(mom2_max_length=64)
    options: dict[str, Any] = {"corpus": from_texts(varied_texts(20)), "n_samples": 20}
    provider = default_covariance(hparams, StatsSource(**options))
    editor = Editor(gpt2, hparams=hparams, stats=provider)
    layers = (LAYER, LAYER + 1, LAYER)
    own = {
        layer: stats.layer_second_moment(
            gpt2, layer, **options, max_length=64, stats_dir=tmp_path / "own", progress=False
        )
        for layer in layers
    }
    assert not torch.equal(own[LAYER], own[LAYER + 1])  # the layers' keys differ
    for layer in layers:
        C = provider(gpt2, layer)
        assert isinstance(C, Tensor)
        assert torch.equal(C, own[layer]), f"the provider's C for layer {layer} is another's"
        factor = editor.covariance(layer).cholesky
        own_factor = CovarianceFactor.from_matrix(own[layer]).cholesky
        assert torch.equal(factor, own_factor), f"the editor's C for layer {layer} is another's"
