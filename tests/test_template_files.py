"""Fixed context templates from a file: one per line or a JSON list, each with one "{}"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rome_fast.edit.template_files import parse_templates, read_templates


def test_one_per_line_keeps_spaces_and_skips_blank_lines() -> None:
    text = "{}\n\n In the news: {}\nBraces {{kept}}. {}\n"
    assert parse_templates(text, "t.txt") == ["{}", " In the news: {}", "Braces {{kept}}. {}"]


def test_json_list_allows_newlines_in_a_template() -> None:
    text = json.dumps(["{}", "Line one.\nLine two. {}"])
    assert parse_templates(text, "t.json") == ["{}", "Line one.\nLine two. {}"]


def test_the_bare_template_is_added_first_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "templates.txt"
    path.write_text("Once. {}\n")
    templates, note = read_templates(path)
    assert templates == ["{}", "Once. {}"]
    assert note is not None
    assert "added the bare template" in note


def test_a_file_with_the_bare_template_is_kept_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "templates.txt"
    path.write_text("Once. {}\n{}\n")
    assert read_templates(path) == (["Once. {}", "{}"], None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no slot here\n", "found 0 field"),
        ("{} and {}\n", "found 2 field"),
        ("named {subject}\n", "found 1 field\\(s\\) \\['subject'\\]"),
        ("positional {0}\n", "\\['0'\\]"),
        ("unbalanced { brace {}\n", "not a valid format string"),
        ("\n\n", "no templates found"),
        ('["{}", 3]', "list of strings"),
        ("[not json", "not a valid JSON list"),
    ],
)
def test_malformed_templates_are_refused_with_where(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_templates(text, "t.txt")


def test_the_line_of_a_bad_template_is_named() -> None:
    with pytest.raises(ValueError, match=r"t\.txt, line 3"):
        parse_templates("{}\n\nbad\n", "t.txt")


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"none\.txt"):
        read_templates(tmp_path / "none.txt")
