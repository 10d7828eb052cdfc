"""Statistics files that are damaged or for another module: a clear refusal, and a damaged
cache file set aside and recomputed instead of blocking every later edit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rome_fast.model.loader import LoadedModel, random_model
from rome_fast.stats import collect as stats
from rome_fast.stats.corpus import from_texts
from tests.models import key_dim

TEXTS = ["The quick brown fox jumps over the lazy dog."] * 6


@pytest.fixture(scope="module")
def gpt2() -> LoadedModel:
    return random_model("tiny-gpt2")


def options(tmp_path: Path) -> dict[str, Any]:
    return {
        "corpus": from_texts(TEXTS),
        "n_samples": 6,
        "max_length": 32,
        "stats_dir": tmp_path,
        "progress": False,
    }


def public_file(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b""),  # empty
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),  # truncated
        lambda p: p.write_bytes(b"not a zip at all, just text"),
    ],
    ids=["empty", "truncated", "not-a-zip"],
)
def test_unreadable_npz_is_a_clear_error(tmp_path: Path, damage: Any) -> None:
    path = public_file(tmp_path / "c.npz", **{"mom2.mom2": np.eye(4), "mom2.count": np.array(10)})
    damage(path)
    with pytest.raises(ValueError, match=r"not a readable \.npz statistics file"):
        stats.load_npz_stats(path)


def test_count_given_as_an_array_is_a_clear_error(tmp_path: Path) -> None:
    path = public_file(
        tmp_path / "c.npz", **{"mom2.mom2": np.eye(4), "mom2.count": np.array([10, 20])}
    )
    with pytest.raises(ValueError, match=r"mom2\.count must be one number"):
        stats.load_npz_stats(path)


def test_file_written_for_another_layer_is_refused(gpt2: LoadedModel, tmp_path: Path) -> None:
    """Same shape at every layer, so only the provenance tells layer 0's file from layer 1's."""
    written = stats.layer_stats(gpt2, 0, **options(tmp_path))
    path = stats.save_npz_stats(written, tmp_path / "layer0.npz")
    assert stats.layer_stats(gpt2, 0, npz_path=path).count == written.count
    with pytest.raises(ValueError, match=r"computed at transformer\.h\.0\.mlp\.c_proj"):
        stats.layer_stats(gpt2, 1, npz_path=path)


def test_file_without_provenance_keeps_the_shape_check(gpt2: LoadedModel, tmp_path: Path) -> None:
    d_in = key_dim(gpt2, 1)
    path = public_file(
        tmp_path / "public.npz",
        **{"mom2.mom2": np.eye(d_in, dtype=np.float32), "mom2.count": np.array(3)},
    )
    assert stats.layer_stats(gpt2, 1, npz_path=path).count == 3


def test_corrupt_cache_file_is_set_aside_and_recomputed(gpt2: LoadedModel, tmp_path: Path) -> None:
    first = stats.layer_stats(gpt2, 1, **options(tmp_path))
    cached = Path(first.provenance["file"])
    cached.write_bytes(cached.read_bytes()[:100])  # a kill while another process wrote it
    again = stats.layer_stats(gpt2, 1, **options(tmp_path))
    assert torch.equal(again.sum, first.sum)
    assert stats.load_npz_stats(cached).count == first.count  # rewritten whole
    assert len(list(cached.parent.glob(cached.name + ".corrupt-*"))) == 1
