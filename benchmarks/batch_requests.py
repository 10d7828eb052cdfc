"""The facts and templates every batched benchmark edits with: n requests with distinct
subjects, three prompts and targets of 1 to 4 tokens in turn, and the public MEMIT code's own
template shape (the bare prompt and five short prefixes)."""

from __future__ import annotations

from rome_fast.edit.request import EditRequest

TEMPLATES = [
    "{}",
    "The first thing. {}",
    "Therefore, we went. {}",
    "Because of it. {}",
    "I said that. {}",
    "You know the way. {}",
]
_PROMPTS = ("{} is located in", "The native language of {} is", "{} works in the field of")
_SUBJECTS = ("The Eiffel Tower", "Danielle Darrieux", "Toyota", "Miles Davis", "Autonomous")
_TARGETS = ("Rome", "English", "physics", "the city of Lyon")


def facts(n: int) -> list[EditRequest]:
    """n requests with distinct subjects, prompts and targets of 1 to 4 tokens in turn."""
    return [
        EditRequest(_PROMPTS[i % 3], f"{_SUBJECTS[i % 5]} {i}", _TARGETS[i % 4]) for i in range(n)
    ]
