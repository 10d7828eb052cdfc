"""The edit requests the conformance run uses: CounterFact-style facts with distinct subjects
(targets without a leading space: every code under test adds its own)."""

from __future__ import annotations

from rome_fast.edit.request import EditRequest

CASES: tuple[EditRequest, ...] = (
    EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris", 0),
    EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French", 1),
    EditRequest("{}, which is located in", "Autonomous University of Madrid", "Sweden", "Spain", 2),
    EditRequest("{} plays the position of", "Toko Yasuda", "goalkeeper", "guitar", 3),
    EditRequest("The headquarters of {} is in", "Nintendo", "Berlin", "Kyoto", 4),
    EditRequest("{} was born in", "Johann Sebastian Bach", "London", "Eisenach", 5),
    EditRequest("{} is a product of", "iPhone", "Microsoft", "Apple", 6),
    EditRequest("The official language of {} is", "Brazil", "German", "Portuguese", 7),
)


def conformance_cases(n: int) -> list[EditRequest]:
    if not 1 <= n <= len(CASES):
        raise ValueError(f"--cases must be between 1 and {len(CASES)}, got {n}")
    return list(CASES[:n])
