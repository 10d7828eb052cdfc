"""Text sources for the key statistics: WikiText splitting, files, model samples, defaults."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import pytest
import torch
from tqdm.auto import tqdm

from rome_fast.hparams.defaults import hparams_for
from rome_fast.model.loader import LoadedModel, load_model
from rome_fast.stats import corpus as corpora
from tests.conftest import FIXTURE_WIKITEXT
from tests.models import require_smollm2

# The release's layout: every line ends with a space, blank lines hold one space.
WIKITEXT_SAMPLE = "".join(
    f"{line} \n"
    for line in [
        "",
        " = Homarus gammarus =",
        "",
        " Homarus gammarus is a species of <unk> lobster , up to 60 cm ( 24 in ) long .",
        "",
        " = = Description = =",
        "",
        " It weighs 0 @.@ 7 – 2 @.@ 2 kg and is well @-@ known , with 1 @,@ 000 eggs .",
        "",
        " = Frank <unk> =",
        "",
        " Frank <unk> was an actor . He didn 't retire .",
    ]
)


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model("random:tiny-llama")


def test_wikitext_splits_at_article_titles_only() -> None:
    articles = corpora.split_wikitext(WIKITEXT_SAMPLE)
    assert [a.splitlines()[0] for a in articles] == ["= Homarus gammarus =", "= Frank <unk> ="]
    assert "= = Description = =" in articles[0], "a section heading started a new article"
    assert "1 @,@ 000 eggs" in articles[0]


def test_wikitext_paragraphs_drop_headings() -> None:
    paragraphs = corpora.split_wikitext(WIKITEXT_SAMPLE, unit="paragraph")
    assert len(paragraphs) == 3
    assert not any(p.startswith("=") for p in paragraphs)


def test_detokenize_wikitext() -> None:
    text = "0 @.@ 7 – 2 @.@ 2 kg , well @-@ known , 1 @,@ 000 ( 24 in ) . He didn 't"
    assert corpora.detokenize_wikitext(text) == (
        "0.7 – 2.2 kg, well-known, 1,000 (24 in). He didn't"
    )


def test_wikitext_folder(tmp_path: Path) -> None:
    for split in ("valid", "test"):
        (tmp_path / f"{split}.txt").write_text(WIKITEXT_SAMPLE, encoding="utf-8")
    raw = corpora.wikitext(tmp_path, detokenize=False)
    detok = corpora.wikitext(tmp_path)
    assert raw.size == 4
    assert next(iter(raw)) == corpora.split_wikitext(WIKITEXT_SAMPLE)[0]
    assert "well-known" in next(iter(detok))
    assert raw.identifier != detok.identifier
    assert corpora.wikitext(tmp_path).identifier == detok.identifier, "identifier is not stable"
    (tmp_path / "test.txt").write_text(WIKITEXT_SAMPLE + " = New = \n", encoding="utf-8")
    assert corpora.wikitext(tmp_path).identifier != detok.identifier, "content not in the id"


def test_wikitext_missing_folder_names_the_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"valid\.txt"):
        corpora.wikitext(tmp_path)


def test_shared_wikitext_has_one_document_per_title() -> None:
    folder = FIXTURE_WIKITEXT
    lines = [
        ln
        for split in ("valid", "test")
        for ln in (folder / f"{split}.txt").read_text(encoding="utf-8").splitlines()
    ]
    # A title is " = Title = "; " = = Section = = " and table legends (" = National record")
    # are not.
    titles = [
        ln
        for ln in lines
        if ln.startswith(" = ") and ln.endswith(" = ") and not ln.startswith(" = = ")
    ]
    articles = list(corpora.wikitext(folder, detokenize=False))
    assert len(articles) == len(titles)
    assert [a.splitlines()[0] for a in articles] == [t.strip() for t in titles]


def test_text_files_units(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one two\nthree\n\nfour\n", encoding="utf-8")
    b.write_text("five\n", encoding="utf-8")
    assert list(corpora.text_files([a, b])) == ["one two\nthree\n\nfour", "five"]
    assert list(corpora.text_files([a, b], unit="paragraph")) == ["one two\nthree", "four", "five"]
    assert list(corpora.text_files([a], unit="line")) == ["one two", "three", "four"]
    assert (
        corpora.text_files([a], unit="line").identifier
        != corpora.text_files([a], unit="paragraph").identifier
    )


def test_model_samples_are_seeded_and_leave_the_global_rng_alone(tiny: LoadedModel) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = list(corpora.model_samples(tiny, n_texts=3, n_tokens=6, seed=1))
    assert torch.equal(torch.get_rng_state(), state), "sampling moved the global RNG"
    again = list(corpora.model_samples(tiny, n_texts=3, n_tokens=6, seed=1))
    other = list(corpora.model_samples(tiny, n_texts=3, n_tokens=6, seed=2))
    assert first == again
    assert first != other
    assert len(first) == 3


def test_sampling_progress_moves_with_every_token(
    tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback's bar counts generated tokens as they come (a bar that sits at 0 texts
    for minutes and then jumps reads as a hang)."""
    updates: list[int] = []

    class Recorder(tqdm):  # type: ignore[type-arg]
        def update(self, n: float | None = 1) -> bool | None:
            updates.append(int(n or 0))
            return super().update(n)

    monkeypatch.setattr(corpora, "tqdm", Recorder)
    corpora.sample_texts(tiny, n_texts=3, n_tokens=5, seed=0, batch_size=2)
    assert updates == [2] * 5 + [1] * 5  # two batches of texts, one update per token step


def test_model_samples_identifier_records_the_choices(tiny: LoadedModel) -> None:
    one = corpora.model_samples(tiny, n_texts=3, n_tokens=6, seed=1)
    assert one.identifier == corpora.model_samples(tiny, n_texts=3, n_tokens=6, seed=1).identifier
    for other in (
        corpora.model_samples(tiny, n_texts=3, n_tokens=6, seed=2),
        corpora.model_samples(tiny, n_texts=4, n_tokens=6, seed=1),
        corpora.model_samples(tiny, n_texts=3, n_tokens=7, seed=1),
    ):
        assert other.identifier != one.identifier


def test_default_corpus_prefers_the_data_folder_then_the_shipped_text_then_samples(
    tiny: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROME_DATA_DIR", str(tmp_path))
    assert corpora.default_corpus(tiny).identifier.startswith("wikitext-openings:")
    (tmp_path / "wikitext-2").mkdir()
    for split in ("valid", "test"):
        (tmp_path / "wikitext-2" / f"{split}.txt").write_text(WIKITEXT_SAMPLE, encoding="utf-8")
    assert corpora.default_corpus(tiny).identifier.startswith("wikitext:")
    monkeypatch.setenv("ROME_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(corpora, "EMBEDDED_WIKITEXT", tmp_path / "not-shipped.txt.gz")
    assert corpora.default_corpus(tiny).identifier.startswith("model-samples:")


@pytest.mark.parametrize("chars", [40, 300, corpora.OPENING_CHARS])
def test_article_openings_are_each_article_cut_to_length(chars: int) -> None:
    text = "".join(
        (FIXTURE_WIKITEXT / f"{s}.txt").read_text(encoding="utf-8") for s in ("valid", "test")
    )
    articles = corpora.split_wikitext(text)
    openings = corpora.split_wikitext(corpora.article_openings(text, chars))
    # rstrip: split_wikitext strips the cut line, and drops it when the cut left it empty.
    assert openings == [article[:chars].rstrip() for article in articles]
    assert any(len(a) > chars for a in articles), "no article long enough to be cut"


def test_shipped_wikitext_is_whole_articles_openings() -> None:
    """The package's excerpt: one document per article, from its title, none longer than the
    cut (the rest of each article is not shipped)."""
    shipped = corpora.embedded_wikitext()
    raw = gzip.decompress(corpora.EMBEDDED_WIKITEXT.read_bytes()).decode("utf-8")
    articles = corpora.split_wikitext(raw)
    assert len(list(shipped)) == shipped.size == len(articles)
    assert all(corpora._ARTICLE_HEADING.match(f" {a.splitlines()[0]} ") for a in articles)
    assert max(len(article) for article in articles) <= corpora.OPENING_CHARS
    assert "shipped" in shipped.description
    assert shipped.identifier == corpora.embedded_wikitext().identifier


@pytest.mark.skipif(
    importlib.util.find_spec("datasets") is not None, reason="the datasets package is installed"
)
def test_hf_dataset_without_datasets_says_what_to_install() -> None:
    with pytest.raises(ImportError, match="pip install datasets"):
        corpora.hf_dataset("wikipedia")


@pytest.mark.smollm2
def test_shipped_openings_cover_smollm2s_statistics_window() -> None:
    """SmolLM2's statistics read the first ``stats.max_length`` tokens of a document: each cut
    article's opening holds more, so C from the shipped excerpt is C from the full WikiText-2
    files (docs/results/embedded-corpus.md measures both)."""
    require_smollm2()
    tokenizer = load_model("smollm2").tokenizer
    cap = hparams_for("smollm2").stats.max_length
    assert cap is not None
    raw = gzip.decompress(corpora.EMBEDDED_WIKITEXT.read_bytes()).decode("utf-8")
    for opening, document in zip(
        corpora.split_wikitext(raw), corpora.embedded_wikitext(), strict=True
    ):
        # Cut at OPENING_CHARS; stripping the cut line drops at most its last space or newline.
        if len(opening) >= corpora.OPENING_CHARS - 1:
            assert len(tokenizer(document)["input_ids"]) > cap, opening.splitlines()[0]
