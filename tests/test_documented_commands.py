"""Every `rome` command the README and the `--help` texts show runs, exactly as written.

Each command runs in a subprocess (the ``rome`` console script), with its documented
``VAR=value`` prefixes, in a fresh working folder shared with the earlier commands of the same
source (a reader follows a README in order; each SmolLM2 line has a folder of its own) that
stands in for the checkout's root (its ``fixtures/`` and a ``../shared`` beside it are links
to the real ones), with the data folder as ``$ROME_DATA_DIR``. Commands that load SmolLM2 (by
name or as the default model) are marked ``smollm2`` (in the default suite; ``nox -s smollm2``
runs them alone), those on Ray (``--workers``, ``--ray-address``) run in the ``ray`` session,
the rest in the default suite. A command that
cannot run here is listed in ``NOT_RUN`` with the reason; it is still parsed by the real
argument parser. A new command that is not listed and fails fails its test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rome_fast.cli.main import build_parser
from rome_fast.infra.datadir import default_data_dir
from rome_fast.model.precision import cpu_bf16_is_emulated
from tests.anchors import anchors_root
from tests.doc_commands import (
    DOC_FILES,
    REPO,
    DocCommand,
    documented_commands,
    loads_a_model,
    python_blocks,
    with_checkout,
)

# The documented line (continuations joined, comments dropped) -> why the suite does not run it.
NOT_RUN = {
    "rome eval --model smollm2 --data counterfact/counterfact-val.json "
    "--variants rome,r-rome,p-rome --limit 100 [--sequential] [--glue-every 20] --out runs/x": (
        "300 SmolLM2 edits with 10 generations each: over an hour on 2 CPU cores; the same "
        "options run in seconds on random:tiny-gpt2 in the README's next block"
    ),
    "rome gate --summary runs/x/summary.json --baseline smollm2-regression-single": (
        "reads runs/x, the output of the 100-case evaluation above; `nox -s regression` runs "
        "this gate on a fresh 20-case run"
    ),
    "rome sweep --layers 2,4,6,8 --facts 16": (
        "64 SmolLM2 edits plus the search for known facts: about 10 minutes on 2 CPU cores"
    ),
    "rome demo": "15 SmolLM2 edits with generations: it is `nox -s demo`, the main job",
    "rome data fetch counterfact zsre": (
        "downloads from the public ROME data site, and the suite runs offline; "
        "tests/test_fetch.py runs the same command against a local server"
    ),
    "rome data fetch stats --model gpt2-xl --layers 17": (
        "downloads from the public ROME data site, and the suite runs offline; "
        "tests/test_fetch.py fetches the same statistics file from a local server"
    ),
}

COMMANDS = documented_commands()


def rome_script() -> list[str]:
    """The console script of this environment (``python -m`` when it is not installed)."""
    script = Path(sys.executable).with_name("rome")
    return [str(script)] if script.exists() else [sys.executable, "-m", "rome_fast.cli.main"]


class Reader:
    """Runs one source's commands in order in one folder, each once, as a reader would."""

    def __init__(self, folder: Path, commands: list[DocCommand]) -> None:
        # The README's relative paths are written from the checkout's root.
        (folder / "fixtures").symlink_to(REPO / "fixtures")
        shared = folder.parent / "shared"
        if not shared.is_symlink():  # dangling in a bare clone: the readers share one link
            shared.symlink_to(REPO.parent / "shared")
        self.folder = folder
        self.commands = commands
        self.results: dict[int, subprocess.CompletedProcess[str]] = {}

    def run_through(self, command: DocCommand) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO), "ROME_DATA_DIR": str(default_data_dir())}
        for i, earlier in enumerate(self.commands):
            if i not in self.results:
                self.results[i] = subprocess.run(
                    [*rome_script(), *with_checkout(earlier.argv, anchors_root())],
                    cwd=self.folder,
                    env={**env, **dict(earlier.env)},
                    capture_output=True,
                    text=True,
                    check=False,
                )
            if earlier == command:
                return self.results[i]
        raise AssertionError(f"{command.text} is not one of its source's commands")


def runnable(command: DocCommand) -> bool:
    return command.written not in NOT_RUN


def needs_smollm2(command: DocCommand) -> bool:
    model = loads_a_model(command.argv)
    return model is not None and not model.startswith("random:")


def on_ray(command: DocCommand) -> bool:
    return any(a.split("=")[0] in ("--workers", "--ray-address") for a in command.argv)


def session(command: DocCommand) -> str:
    """The session that runs ``command``: ``smollm2``, ``ray`` or the default (``tests``)."""
    return "smollm2" if needs_smollm2(command) else "ray" if on_ray(command) else "tests"


def reader_of(command: DocCommand) -> str:
    """The folder ``command`` runs in: its source's, shared with that source's earlier
    commands of the same session; a SmolLM2 line has one of its own (each is a whole edit on
    its own, and the slowest items of the suite: apart, both workers of a parallel session
    take them)."""
    if session(command) == "smollm2":
        return f"{command.source} | smollm2 | {command.text}"
    return f"{command.source} | {session(command)}"


def run_so_far(command: DocCommand) -> tuple[str, ...]:
    """What running ``command`` does: its reader's commands up to it, in a fresh folder."""
    same_reader = [c for c in filter(runnable, COMMANDS) if reader_of(c) == reader_of(command)]
    return tuple(c.text for c in same_reader[: same_reader.index(command) + 1])


def params() -> Iterator[object]:
    # A line shown in several places with the same lines before it (the examples of
    # `rome gate --help` and `rome baseline --help`) runs once: a second run would repeat
    # the first exactly.
    seen = set()
    for c in COMMANDS:
        if runnable(c) and run_so_far(c) not in seen:
            seen.add(run_so_far(c))
            marks = {"smollm2": [pytest.mark.smollm2], "ray": [pytest.mark.ray], "tests": []}
            # A public editor's checkout: third-party code, absent from a bare clone.
            public = [pytest.mark.anchors] if "--editor-path" in c.argv else []
            # A reader's commands stay on one worker (tests/conftest.py), in order.
            group = pytest.mark.xdist_group(f"documented: {reader_of(c)}")
            yield pytest.param(
                c, marks=[*marks[session(c)], *public, group], id=f"{c.source}: {c.text}"[:120]
            )


@pytest.fixture(scope="module")
def readers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Reader]:
    """One reader per folder (:func:`reader_of`)."""
    groups: dict[str, list[DocCommand]] = {}
    for c in filter(runnable, COMMANDS):
        groups.setdefault(reader_of(c), []).append(c)
    return {
        key: Reader(tmp_path_factory.mktemp("reader"), commands) for key, commands in groups.items()
    }


def emulated_bf16(command: DocCommand) -> bool:
    """A bf16 edit on a CPU that only emulates bfloat16 (AVX2: over 6 minutes for the
    README's SmolLM2 edit, 15 s in fp32; ``precision.cpu_bf16_is_emulated``)."""
    argv = list(command.argv)
    bf16 = "--precision" in argv and argv[argv.index("--precision") + 1] == "bf16"
    on_gpu = "--device" in argv and argv[argv.index("--device") + 1].startswith("cuda")
    return bf16 and not on_gpu and cpu_bf16_is_emulated()


@pytest.mark.parametrize("command", list(params()))
def test_documented_command_runs(command: DocCommand, readers: dict[str, Reader]) -> None:
    if emulated_bf16(command):
        pytest.skip(
            "this CPU has no bfloat16 instructions (AVX512_BF16/AMX): the bf16 v* loop runs "
            "emulated, minutes instead of seconds; it runs where the CPU has them, and the "
            "bf16 loop itself is tested on tiny models (tests/test_precision.py)"
        )
    result = readers[reader_of(command)].run_through(command)
    assert result.returncode == 0, (
        f"{command.source} shows `{command.written}`; `{command.text}` exited "
        f"{result.returncode}\nstdout tail:\n{result.stdout[-2000:]}\n"
        f"stderr tail:\n{result.stderr[-4000:]}"
    )


@pytest.mark.parametrize("written", sorted(NOT_RUN))
def test_commands_not_run_are_still_documented(written: str) -> None:
    assert any(c.written == written for c in COMMANDS), (
        f"NOT_RUN lists `{written}`, which no README block or --help text shows any more"
    )


@pytest.mark.parametrize(
    "command", [c for c in COMMANDS if not runnable(c)], ids=lambda c: c.text[:100]
)
def test_commands_not_run_parse(command: DocCommand) -> None:
    build_parser().parse_args(list(command.argv))  # exits 2 on an unknown or missing option


def test_the_documentation_shows_commands() -> None:
    """The extraction itself: the pages' blocks hold a line of every command, and every help
    text its examples."""
    shown = {c.argv[0] for c in COMMANDS if c.source in DOC_FILES}
    every = {"edit", "demo", "sweep", "stats", "eval", "gate", "baseline", "conform", "data"}
    assert shown == every, shown
    assert {c.source for c in COMMANDS} >= {f"rome {name} --help" for name in every}


README_PYTHON = python_blocks((REPO / "README.md").read_text())


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b, marks=[pytest.mark.smollm2] if '"smollm2"' in b else [], id=f"block {i}")
        for i, b in enumerate(README_PYTHON)
    ],
)
def test_readme_python_runs(block: str, tmp_path: Path) -> None:
    """Each Python block of the README, pasted into a fresh interpreter, runs."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "ROME_DATA_DIR": str(default_data_dir())}
    result = subprocess.run(
        [sys.executable, "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"{block}\nstderr tail:\n{result.stderr[-4000:]}"
    assert result.stdout, "the block prints what it shows"


def test_the_readme_has_python_examples() -> None:
    assert len(README_PYTHON) >= 2, "the README shows an edit and check_variant in Python"
