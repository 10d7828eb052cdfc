"""The command surface of ``rome``: what every command offers and how it says so.

Each command offers exactly the options it reads (read from the source of ``rome_fast/cli``:
the command's entry point and every ``rome_fast.cli`` function it calls); the same concept
has one name and one default everywhere; old spellings still work with a warning; help is
written for people and loads neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from rome_fast.cli import main as cli_main
from rome_fast.cli.main import LazyCommand, build_parser, package_version
from rome_fast.cli.outputs import write_json_output
from rome_fast.cli.validate import comma_integers, comma_list
from tests.doc_commands import REPO, subparsers

CLI = REPO / "rome_fast" / "cli"
# Set on the parsed options by read_inputs (rome_fast.cli.inputs), not by an option.
DERIVED = {"hparams_file", "method_hparams", "fixed_templates", "inputs_read"}
NOT_OPTIONS = {"help", "version", "func", "command", "action"}


def commands() -> dict[str, argparse.ArgumentParser]:
    """``edit`` … ``data fetch``: every parser that runs a command."""
    found = {}
    for name, parser in subparsers(build_parser()).items():
        nested = subparsers(parser)
        found.update({f"{name} {n}": p for n, p in nested.items()} if nested else {name: parser})
    return found


def required(parser: argparse.ArgumentParser, action: argparse.Action) -> bool:
    """Required by itself, or in a required choice between an option and its old spelling."""
    groups = parser._mutually_exclusive_groups
    return action.required or any(g.required and action in g._group_actions for g in groups)


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest not in NOT_OPTIONS]


# --- help loads nothing heavy -------------------------------------------------------------


def test_help_imports_neither_torch_nor_transformers() -> None:
    """``rome --help`` and every ``rome CMD --help``, in a fresh interpreter (35 s of imports
    on a loaded 2-core machine before the parser was made lazy)."""
    helps = [[], *[[*name.split()] for name in commands()], ["data"]]
    script = f"""
import contextlib, io, sys
from rome_fast.cli.main import main
for words in {helps!r}:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main([*words, "--help"])
        except SystemExit:
            pass
print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "transformers"}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


# --- help written for people ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_option_shows_a_metavar_and_its_default(name: str) -> None:
    parser = commands()[name]
    formatter = parser._get_formatter()
    for action in options(parser):
        if action.help is argparse.SUPPRESS:
            continue  # a deprecated spelling (test_deprecated_spelling_still_works)
        if action.nargs != 0:
            assert action.metavar or action.choices, f"rome {name} {action.option_strings[0]}"
        shown = formatter._expand_help(action)
        if not required(parser, action):
            assert "(default: " in shown, f"rome {name} {action.option_strings[0]}: {shown!r}"


@pytest.mark.parametrize("name", ["", *sorted(commands())])
def test_help_has_a_description_examples_and_no_markup(name: str) -> None:
    parser = commands()[name] if name else build_parser()
    text = parser.format_help()
    assert parser.description, name
    assert "examples:\n  rome " in text, text
    for markup in ("``", ":func:", ":class:"):
        assert markup not in text, text


def test_version_is_the_distributions() -> None:
    try:
        expected = version("rome-verify")
    except PackageNotFoundError:  # a plain checkout: the project file's
        expected = package_version()
    result = subprocess.run(
        [sys.executable, "-m", "rome_fast.cli.main", "--version"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == f"rome {expected}"
    assert expected.count(".") >= 1


# --- one name and one default per concept ------------------------------------------------


@pytest.mark.parametrize("name", sorted(commands()))
def test_a_model_is_optional_and_defaults_to_the_embedded_one(name: str) -> None:
    model = [a for a in options(commands()[name]) if "--model" in a.option_strings]
    if not model or model[0].choices:  # data fetch: which public statistics, not a model
        return
    assert (model[0].required, model[0].default) == (False, "smollm2")


@pytest.mark.parametrize("name", sorted(commands()))
def test_the_device_defaults_to_cuda_when_present(name: str) -> None:
    device = [a for a in options(commands()[name]) if "--device" in a.option_strings]
    if device:
        assert device[0].default is None  # resolved when the command runs
        assert "(default: cuda when available, else cpu)" in (device[0].help or "")


def test_a_command_runs_on_the_default_device(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def command(args: argparse.Namespace) -> int:
        seen.append(args.device)
        return 0

    # As on a machine with CUDA (the check of the device itself is test_cli_errors').
    monkeypatch.setattr(cli_main, "default_device", lambda: "cuda")
    monkeypatch.setattr(cli_main, "check_device", lambda _device: None)
    args = argparse.Namespace(command="stats", device=None, func=command)
    assert cli_main._run(args) == 0
    assert seen == ["cuda"]


@pytest.mark.parametrize("name", sorted(commands()))
def test_out_is_a_folder_and_json_a_file(name: str) -> None:
    for action in options(commands()[name]):
        if action.help is argparse.SUPPRESS:
            continue
        if "--out" in action.option_strings:
            assert action.metavar == "DIR", name
        if "--json" in action.option_strings:
            assert action.metavar == "FILE", name


EDIT = ["edit", "--prompt", "{} is", "--subject", "s"]
BASELINE = ["baseline", "--summary", "s", "--mode", "single", "--name", "n", "--source", "t"]
# A command line with an old spelling, the new spelling, its destination and the value.
DEPRECATED = [
    ([*EDIT, "--target", "Rome"], "--target-new", "target_new", "Rome"),
    ([*EDIT, "--target-new", "R", "--true", "Paris"], "--target-true", "target_true", "Paris"),
    (
        [*EDIT, "--target-new", "R", "--generate", "3"],
        "--generation-tokens",
        "generation_tokens",
        3,
    ),
    (["conform", "--editor", "rome-verify", "--config", "p"], "--variant", "editor_variant", "p"),
    (["eval", "--out", "x", "--config", "rome"], "--variant", "editor_variant", "rome"),
    ([*BASELINE, "--tolerance", "1", "--out", "b.json"], "--json", "json", Path("b.json")),
    (["data", "fetch", "zsre", "--dest", "d"], "--out", "out", Path("d")),
]


@pytest.mark.parametrize(("argv", "new", "dest", "value"), DEPRECATED, ids=lambda x: str(x)[:40])
def test_deprecated_spelling_still_works(
    argv: list[str], new: str, dest: str, value: object, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(argv)
    old = next(word for word in argv if word.startswith("--") and word not in new_options(argv))
    command = " ".join(argv[:2] if argv[0] == "data" else argv[:1])
    assert capsys.readouterr().err == f"rome {command}: warning: {old} is deprecated, use {new}\n"
    assert getattr(args, dest) == value
    renamed = [new if word == old else word for word in argv]
    assert vars(build_parser().parse_args(renamed)) == vars(args)
    assert capsys.readouterr().err == ""


def new_options(argv: list[str]) -> set[str]:
    """The options of ``argv``'s command that its help shows (not the deprecated ones)."""
    name = " ".join(argv[:2]) if argv[0] == "data" else argv[0]
    shown = [a for a in options(commands()[name]) if a.help is not argparse.SUPPRESS]
    return {s for a in shown for s in a.option_strings}


def test_a_required_option_is_required_under_either_spelling(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One fact needs its new object (``rome edit --method`` reads the facts from a file, so
    the option is required by the command, not by the parser), named by its new spelling."""
    assert cli_main.main(["edit", "--prompt", "{} is", "--subject", "s"]) == 2
    assert "--target-new is required" in capsys.readouterr().err


# --- each command offers exactly what it reads --------------------------------------------


def cli_functions() -> dict[str, ast.FunctionDef]:
    found: dict[str, ast.FunctionDef] = {}
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef):
                assert node.name not in found or node.name.startswith("__"), (
                    f"two functions named {node.name} in rome_fast/cli: the reading of "
                    "options below follows calls by name"
                )
                found[node.name] = node
    return found


def is_load(node: ast.Attribute) -> bool:
    return isinstance(node.ctx, ast.Load)


def is_hasattr_args(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "hasattr"
        for n in ast.walk(node)
    )


class OptionReads(ast.NodeVisitor):
    """``args.X`` (a read), ``getattr(args, "X", default)`` (a read where offered), and the
    reads of every ``rome_fast.cli`` function called; code under ``if hasattr(args, …)`` reads
    only where the command offers the option."""

    def __init__(self, functions: dict[str, ast.FunctionDef]) -> None:
        self.functions = functions
        self.required: set[str] = set()
        self.optional: set[str] = set()
        self.seen: set[str] = set()
        self.guarded = False

    def read(self, name: str, optional: bool) -> None:
        (self.optional if optional or self.guarded else self.required).add(name)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id == "args" and is_load(node):
            self.read(node.attr, optional=False)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else None
        first = node.args[0] if node.args else None
        if name == "getattr" and isinstance(first, ast.Name) and first.id == "args":
            key = node.args[1]
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                self.read(key.value, optional=len(node.args) > 2)
        if name in self.functions and name not in self.seen:
            self.seen.add(name)
            self.visit(self.functions[name])
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        self.guarded_visit(node.test, [*node.body, *node.orelse])

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self.guarded_visit(node.test, [node.body, node.orelse])

    def guarded_visit(self, test: ast.expr, branches: list[ast.AST]) -> None:
        self.visit(test)
        was, self.guarded = self.guarded, self.guarded or is_hasattr_args(test)
        for branch in branches:
            self.visit(branch)
        self.guarded = was


def entry_point(parser: argparse.ArgumentParser) -> str:
    func = parser.get_default("func")
    return func.function if isinstance(func, LazyCommand) else str(func.__name__)


@pytest.mark.parametrize("name", sorted(commands()))
def test_a_command_offers_exactly_the_options_it_reads(name: str) -> None:
    parser = commands()[name]
    offered = {a.dest for a in parser._actions if a.dest not in NOT_OPTIONS}
    reads = OptionReads(cli_functions())
    entries = [entry_point(parser)] + (["read_inputs"] if "hparams" in offered else [])
    for entry in entries:  # main._run calls read_inputs where the command has --hparams
        reads.visit(ast.Call(func=ast.Name(id=entry, ctx=ast.Load()), args=[], keywords=[]))
    # main._run resolves and checks --device wherever a command offers it.
    unread = offered - reads.required - reads.optional - {"device"}
    assert not unread, f"rome {name} offers options it never reads: {sorted(unread)}"
    missing = reads.required - offered - DERIVED
    assert not missing, f"rome {name} reads options it does not offer: {sorted(missing)}"


# --- one function per rule ---------------------------------------------------------------


def test_comma_separated_options_are_split_one_way() -> None:
    assert comma_list(" rome, r-rome ,,p-rome ") == ["rome", "r-rome", "p-rome"]
    assert comma_list("") == []
    assert comma_integers("2, 4,6", "--layers") == [2, 4, 6]
    with pytest.raises(ValueError, match="--layers 'two': give comma-separated integers"):
        comma_integers("two", "--layers")


def test_json_output_is_written_whole_with_its_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "new" / "folder" / "out.json"
    write_json_output(path, {"a": [1, 2.5], "b": "é"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": [1, 2.5], "b": "é"}
    assert capsys.readouterr().out == f"wrote {path}\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]  # no temporary left
