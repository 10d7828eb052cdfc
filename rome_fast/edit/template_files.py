"""Fixed context templates from a file (``--templates FILE``), instead of sampled ones.

Two formats: a JSON list of strings (``.json``, or any file whose text starts with ``[``;
the way to give a template holding a newline), or one template per line (blank lines
skipped, nothing else stripped: a leading space changes the tokens).

Each template must hold exactly one replacement field, ``{}``, where the prompt goes;
literal braces are written doubled (``{{``, ``}}``), as ``str.format`` reads them. The
bare template ``"{}"`` (the prompt itself, which gives ``k_prompt``) is added first when the
file lacks it, and a note says so; the list used is recorded with every edit.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from rome_fast.edit.keys import BARE_TEMPLATE


def _check_template(template: str, where: str) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise ValueError(
            f"{where}: template {template!r} is not a valid format string ({err}); write "
            "literal braces doubled: {{ and }}"
        ) from None
    if fields != [""]:
        raise ValueError(
            f"{where}: template {template!r} must hold exactly one '{{}}' where the prompt "
            f"goes, found {len(fields)} field(s) {fields}; write literal braces doubled"
        )


def parse_templates(text: str, source: str) -> list[str]:
    """The templates ``text`` holds (see the module docstring), checked, without the bare one
    added."""
    if text.lstrip().startswith("["):
        try:
            templates = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not a valid JSON list of templates: {err}") from None
        if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
            raise ValueError(f"{source}: the JSON must be a list of strings")
        numbered = list(enumerate(templates, start=1))
        kind = "item"
    else:
        numbered = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
        kind = "line"
    if not numbered:
        raise ValueError(f"{source}: no templates found; give one per line or a JSON list")
    for n, template in numbered:
        _check_template(template, f"{source}, {kind} {n}")
    return [t for _, t in numbered]


def read_templates(path: str | Path) -> tuple[list[str], str | None]:
    """The templates of ``path`` with ``"{}"`` first if it was missing, and a note if so."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"templates file {str(path)!r} does not exist")
    templates = parse_templates(path.read_text(), str(path))
    if BARE_TEMPLATE in templates:
        return templates, None
    note = f"{path}: added the bare template {BARE_TEMPLATE!r} first (k_prompt is its key)"
    return [BARE_TEMPLATE, *templates], note
