"""How every ``rome`` command presents itself: help with metavars and defaults, examples in
an epilog, old option spellings kept as deprecated aliases. Imports nothing heavy: printing
help must not load torch."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; ``(default: …)`` after each option's help.

    An option whose default is None states its default in its own help (``per model``,
    ``$VAR``…), since ``None`` tells a reader nothing; a flag is off unless given."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default:" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.nargs == 0:  # a flag
            return f"{text} (default: off)"
        if action.default is None:
            return text
        return f"{text} (default: %(default)s)"


def add_command(
    sub: Subcommands, name: str, summary: str, description: str, examples: Sequence[str] = ()
) -> argparse.ArgumentParser:
    """``rome NAME``: a one-line summary for ``rome --help``, a paragraph and examples (each
    example line is run by the documented-commands test) for ``rome NAME --help``."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples) if examples else None
    return sub.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, width=92),
        epilog=epilog,
        formatter_class=HelpFormatter,
    )


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option: warns once per use and stores as the new option does."""

    def __init__(
        self, option_strings: list[str], dest: str, *, replacement: argparse.Action, **_: Any
    ) -> None:
        super().__init__(
            option_strings,
            dest,
            nargs=replacement.nargs,
            type=replacement.type,  # type: ignore[arg-type]  # typeshed: a str is a type name
            choices=replacement.choices,
            default=argparse.SUPPRESS,  # never overwrites the new option's default
            help=argparse.SUPPRESS,
        )
        self.replacement = replacement

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        new = self.replacement.option_strings[0]
        warning = f"{parser.prog}: warning: {option_string} is deprecated, use {new}"
        print(warning, file=sys.stderr)
        self.replacement(parser, namespace, values, new)


def deprecated_alias(container: argparse._ActionsContainer, old: str, new: str) -> None:
    """Keep ``old`` working as ``new`` (users' scripts call today's names), with a warning;
    ``container`` is the parser or group that holds ``new``. A required option with an alias
    goes in a required mutually exclusive group, so that either spelling satisfies argparse."""
    replacement = next(a for a in container._actions if new in a.option_strings)
    container.add_argument(
        old, dest=replacement.dest, action=DeprecatedAlias, replacement=replacement
    )
