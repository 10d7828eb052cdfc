"""The `rome` command lines the documentation shows, parsed from its text.

Sources: the fenced shell blocks of the README and of the documentation pages in ``DOC_FILES``,
and the description/epilog of ``rome --help`` and of every ``rome SUB --help``; the README's
Python blocks are run as well (``python_blocks``). A command is a line starting with
``rome ``, or with environment assignments (``OMP_NUM_THREADS=1 rome …``) and then ``rome ``
(a leading ``$ `` is dropped); a trailing backslash continues it, ``#`` starts a comment. Two
placeholders have a defined expansion, the one docs/COMMANDS.md states:

- ``rome SUB ... OPTIONS`` is the last full ``rome SUB`` command of the same source with
  ``OPTIONS`` added;
- ``[--option value]`` is optional: the line expands to the command without any bracketed part
  and to the command with all of them.
"""

from __future__ import annotations

import argparse
import functools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from rome_fast.cli.main import build_parser

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = ("README.md", "docs/COMMANDS.md")  # every page that shows `rome` command lines
FENCE = re.compile(r"^```(\w*)\s*$")
SHELL_FENCES = {"", "sh", "bash", "shell", "console"}
OPTIONAL = re.compile(r"\[([^\[\]]+)\]")
COMMAND = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S+\s+)*rome ")  # optional VAR=value prefixes
ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")


@dataclass(frozen=True)
class DocCommand:
    source: str  # "README.md", "docs/COMMANDS.md" or "rome eval --help"
    written: str  # the line as documented (continuations joined, comment dropped)
    argv: tuple[str, ...]  # after expanding placeholders, without the leading "rome"
    env: tuple[tuple[str, str], ...] = ()  # the line's VAR=value prefixes

    @property
    def text(self) -> str:
        prefix = "".join(f"{name}={shlex.quote(value)} " for name, value in self.env)
        return prefix + shlex.join(["rome", *self.argv])


def command_lines(text: str, *, fenced: bool) -> list[str]:
    """``rome …`` lines of ``text`` (only inside shell code fences when ``fenced``)."""
    lines, pending = [], ""
    language: str | None = None if fenced else ""  # of the open code fence; None: prose
    for raw in text.splitlines():
        fence = FENCE.match(raw.strip()) if fenced else None
        if fence:
            language = fence.group(1) if language is None else None
            continue
        if language not in SHELL_FENCES:
            continue
        line = raw.strip().removeprefix("$ ")
        if pending:
            line = pending + " " + line
        elif not COMMAND.match(line):
            continue
        if line.endswith("\\"):
            pending = line[:-1].strip()
            continue
        pending = ""
        lines.append(without_comment(line))
    return lines


def without_comment(line: str) -> str:
    """``line`` up to its first `` #`` outside quotes."""
    for at in (m.start() for m in re.finditer(r"\s#", line)):
        try:
            shlex.split(line[:at])
        except ValueError:  # the '#' is inside an open quote
            continue
        return line[:at].rstrip()
    return line


def expand(source: str, lines: list[str]) -> list[DocCommand]:
    commands: list[DocCommand] = []
    last_full: dict[str, list[str]] = {}
    for written in lines:
        variants = [OPTIONAL.sub("", written)]
        if OPTIONAL.search(written):
            variants.append(OPTIONAL.sub(r"\1", written))
        for variant in variants:
            words = shlex.split(variant)
            env = []
            while (assignment := ASSIGNMENT.match(words[0])) is not None:
                env.append((assignment.group(1), assignment.group(2)))
                words = words[1:]
            sub, rest = words[1], words[2:]
            if rest[:1] == ["..."]:
                if sub not in last_full:
                    raise ValueError(f"{source}: {written!r} uses '...' before a full `rome {sub}`")
                rest = last_full[sub] + rest[1:]
            else:
                last_full[sub] = rest
            commands.append(DocCommand(source, written, (sub, *rest), tuple(env)))
    return commands


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def help_texts() -> dict[str, str]:
    """Description and epilog of ``rome --help`` and each ``rome SUB --help``."""
    parser = build_parser()
    parsers = {"rome --help": parser}
    parsers.update({f"rome {name} --help": p for name, p in subparsers(parser).items()})
    return {
        source: "\n".join(t for t in (p.description, p.epilog) if t)
        for source, p in parsers.items()
    }


def documented_commands() -> list[DocCommand]:
    commands: list[DocCommand] = []
    for page in DOC_FILES:
        commands += expand(page, command_lines((REPO / page).read_text(), fenced=True))
    for source, text in help_texts().items():
        commands += expand(source, command_lines(text, fenced=False))
    return commands


def python_blocks(text: str) -> list[str]:
    """The fenced ``python`` blocks of ``text``, each as written."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


# What the README writes for a third-party checkout, as a user would; the folder holding it
# in the project's anchors for each public editor.
CHECKOUT = "path/to/your/checkout"
CHECKOUT_FOLDERS = {
    "rebuilding-rome": "rebuilding-rome",
    "easyedit-rome": "easyedit",
    "easyedit-r-rome": "easyedit",
    "memit": "memit",
    "easyedit-memit": "easyedit",
    "easyedit-emmet": "easyedit",
    "easyedit-alphaedit": "easyedit",
}


def with_checkout(argv: tuple[str, ...], anchors: Path) -> tuple[str, ...]:
    """``argv`` with ``--editor-path path/to/your/checkout`` made the public editor's real
    checkout under ``anchors``."""
    if CHECKOUT not in argv:
        return argv
    editor = argv[argv.index("--editor") + 1]
    return tuple(str(anchors / CHECKOUT_FOLDERS[editor]) if a == CHECKOUT else a for a in argv)


@functools.cache
def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """``rome``'s subcommand parsers, built once: collecting the documented commands asks
    for them thousands of times (built each time, that was most of the suite's collection)."""
    return subparsers(build_parser())


@functools.cache
def loads_a_model(argv: tuple[str, ...]) -> str | None:
    """The model a command loads (its ``--model`` or the default), or None if it loads none."""
    sub = command_parsers()[argv[0]]
    if not any("--model" in a.option_strings for a in sub._actions):
        return None
    return str(sub.parse_known_args(list(argv[1:]))[0].model)
