"""Subject-last token lookup: BPE-correct at the slot, with left or right padding; the one
rule that turns a target into tokens; the pad id."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerBase

from rome_fast.infra.reproducer import reproducible
from rome_fast.model.tokens import (
    apply_template,
    pad_id,
    split_prompt,
    subject_last_index,
    subject_last_positions,
    target_token_ids,
)
from tests.models import tiny_model

WORDS = [
    "Paris",
    "the",
    "Eiffel",
    "Tower",
    "is",
    "located",
    "Danielle",
    "Darrieux",
    "in",
    "of",
    "Toyota",
    "Prius",
    "x",
    "2024",
    "ß",
    "naïve",
]


def gpt2_tokenizer() -> PreTrainedTokenizerBase:  # the real GPT-2 BPE, shared with the tiny models
    return tiny_model("tiny-gpt2").tokenizer


@reproducible
def assert_subject_ends_at(prompt: str, subject: str) -> None:
    """Reference: the tokens up to the index decode to the text up to the subject's end."""
    tok = gpt2_tokenizer()
    ids, index = subject_last_index(tok, prompt, subject)
    before, _ = split_prompt(prompt)
    decoded = tok.decode(ids[: index + 1])
    assert decoded == before + subject, (
        f"prompt={prompt!r} subject={subject!r}: tokens through {index} decode to {decoded!r}"
    )


@pytest.mark.parametrize(
    ("prompt", "subject"),
    [
        ("{} is located in the city of", "The Eiffel Tower"),  # subject starts the prompt
        ("Where is {}? It is in", "the Eiffel Tower"),  # middle, after a space
        ("{}", "Danielle Darrieux"),  # the whole prompt
        ("The mother tongue of {} is", "Danielle Darrieux"),  # leading-space BPE merges
        ("({}) is", "Toyota Prius"),  # no space before the subject
    ],
)
def test_subject_last_token_cases(prompt: str, subject: str) -> None:
    assert_subject_ends_at(prompt, subject)


def test_subject_twice_uses_the_slot_not_the_first_occurrence() -> None:
    tok = gpt2_tokenizer()
    ids_late, late = subject_last_index(tok, "Paris is near {}", "Paris")
    ids_early, early = subject_last_index(tok, "{} is near Paris", "Paris")
    assert late == len(ids_late) - 1
    assert early == 0
    assert tok.decode(ids_early[early]) == "Paris"


@given(
    before=st.lists(st.sampled_from(WORDS), max_size=4),
    subject=st.lists(st.sampled_from(WORDS), min_size=1, max_size=3),
    after=st.lists(st.sampled_from(WORDS), max_size=4),
)
def test_subject_last_token_property(
    before: list[str], subject: list[str], after: list[str]
) -> None:
    # Built so the slot is separated by spaces: a token always ends where the subject ends.
    prompt = " ".join([*before, "{}"]) + "".join(" " + w for w in after)
    assert_subject_ends_at(prompt, " ".join(subject))


def test_left_and_right_padding_point_at_the_same_tokens() -> None:
    tok = gpt2_tokenizer()
    prompts = ["{} is in", "A much longer prompt about {} and more words", "{}"]
    subjects = ["Paris", "the Eiffel Tower", "Danielle Darrieux"]
    right = subject_last_positions(tok, prompts, subjects, "right")
    left = subject_last_positions(tok, prompts, subjects, "left")
    for row, (prompt, subject) in enumerate(zip(prompts, subjects, strict=True)):
        ids, index = subject_last_index(tok, prompt, subject)
        for batch in (right, left):
            assert int(batch.input_ids[row, batch.positions[row]]) == ids[index]
            start = int(batch.offsets[row])
            assert batch.input_ids[row, start : start + len(ids)].tolist() == ids
            # real tokens are numbered from 0 whatever the padding
            assert int(batch.position_ids[row, batch.positions[row]]) == index
    assert left.offsets.tolist() != right.offsets.tolist()


def test_continuations_are_appended_as_ids() -> None:
    tok = gpt2_tokenizer()
    batch = subject_last_positions(
        tok, ["{} is in", "{}"], ["Paris", "Rome"], "left", continuations=[[11, 12], []]
    )
    row0 = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    assert row0[-2:] == [11, 12]
    expected = [len(tok("Paris is in")["input_ids"]), len(tok("Rome")["input_ids"])]
    assert batch.prompt_lengths.tolist() == expected


def test_escaped_braces_are_literal_and_templates_compose() -> None:
    template = "He said {{hi}}. {}"
    prompt = "{} likes {{braces}}"
    composed = apply_template(template, prompt)
    assert composed == "He said {{hi}}. {} likes {{braces}}"
    assert split_prompt(composed) == ("He said {hi}. ", " likes {braces}")
    assert_subject_ends_at(composed, "Paris")


@pytest.mark.parametrize(
    ("prompt", "subject", "message"),
    [
        ("The Eiffel Tower is in", "The Eiffel Tower", "exactly one"),  # no slot
        ("{} and {}", "Paris", "exactly one"),  # two slots
        ("{0} is in", "Paris", "exactly one"),  # a numbered field is not the slot
        ("{} is in {", "Paris", "not a valid format string"),
        ("{} is in", "  ", "non-empty"),
        ("{}s are", "Rome", "cannot locate"),  # "R|omes": no token ends at "Rome"
    ],
)
def test_bad_prompts_and_subjects_raise(prompt: str, subject: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        subject_last_index(gpt2_tokenizer(), prompt, subject)


def test_bad_padding_side_raises() -> None:
    with pytest.raises(ValueError, match="padding_side"):
        subject_last_positions(gpt2_tokenizer(), ["{}"], ["Paris"], "middle")


def bos_adding_tokenizer() -> PreTrainedTokenizerBase:
    """GPT-2's BPE made to prepend a BOS, as Llama-family tokenizers do (a copy: the shared
    tokenizer stays as it is)."""
    tokenizer = copy.deepcopy(gpt2_tokenizer())
    tokenizer.add_bos_token = True
    assert tokenizer(" French")["input_ids"][0] == tokenizer.bos_token_id
    return tokenizer


TOKENIZER_FAMILIES = {"gpt2-bpe": gpt2_tokenizer, "bos-adding": bos_adding_tokenizer}


@pytest.mark.parametrize("spaces", [0, 1, 2])
@pytest.mark.parametrize("family", list(TOKENIZER_FAMILIES))
def test_a_target_is_one_space_then_its_words(family: str, spaces: int) -> None:
    tokenizer = TOKENIZER_FAMILIES[family]()
    for target in ("French", "the French Republic"):
        spaced = tokenizer(" " + target, add_special_tokens=False)["input_ids"]
        assert spaced != tokenizer(target, add_special_tokens=False)["input_ids"]
        assert target_token_ids(tokenizer, " " * spaces + target) == spaced


def test_an_empty_target_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        target_token_ids(gpt2_tokenizer(), "  ")


def test_pad_id_is_the_pad_token_else_end_of_text() -> None:
    tokenizer = copy.deepcopy(gpt2_tokenizer())
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    assert pad_id(tokenizer) == tokenizer.convert_tokens_to_ids("<pad>") != tokenizer.eos_token_id
    tokenizer.pad_token = None
    assert pad_id(tokenizer) == tokenizer.eos_token_id
