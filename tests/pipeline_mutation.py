"""The whole-pipeline mutation check (``nox -s mutation``): each mutant of
tests/pipeline_mutants.py is planted in a copy of the tree and its narrow test selection must
fail there. Not collected by the default suite (slow: one pytest process per mutant).

``python -m tests.pipeline_mutation [--table FILE] [NAME ...]`` runs them outside pytest and
writes the table of which test caught each mutant.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.anchors import anchors_root
from tests.conftest import FIXTURE_DATA
from tests.pipeline_mutants import MUTANTS, Mutant

REPO = Path(__file__).resolve().parents[1]
IGNORED = shutil.ignore_patterns(
    ".git", ".nox", "runs", "__pycache__", ".hypothesis", ".pytest_cache", ".benchmarks", ".venv"
)
TIMEOUT_S = 600


@dataclass(frozen=True)
class Outcome:
    mutant: Mutant
    returncode: int
    failed: tuple[str, ...]  # the tests that failed
    seconds: float
    output: str

    @property
    def caught(self) -> bool:
        return self.returncode == 1 and bool(self.failed)  # tests failed (not an error, not 0)


def plant(root: Path, mutant: Mutant) -> None:
    """Apply ``mutant`` to the tree at ``root``; its snippet must occur exactly once."""
    path = root / mutant.file
    source = path.read_text()
    count = source.count(mutant.snippet)
    if count != 1:
        raise ValueError(
            f"mutant {mutant.name}: its snippet occurs {count} times in {mutant.file}, not once; "
            "update tests/pipeline_mutants.py to the current code"
        )
    path.write_text(source.replace(mutant.snippet, mutant.replacement))


def run_selection(root: Path, selection: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "OMP_NUM_THREADS": "1",
        "ROME_DATA_DIR": os.environ.get("ROME_DATA_DIR", str(FIXTURE_DATA)),
        "ROME_ANCHORS_DIR": str(anchors_root()),
    }
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*command, "-m", "not gpu and not smollm2", *selection],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def run_mutant(mutant: Mutant) -> Outcome:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        root = Path(tmp) / "tree"
        shutil.copytree(REPO, root, ignore=IGNORED)
        plant(root, mutant)
        start = time.perf_counter()
        result = run_selection(root, mutant.selection)
        seconds = time.perf_counter() - start
    failed = tuple(re.findall(r"^FAILED (.+?)(?: - .*)?$", result.stdout, flags=re.MULTILINE))
    return Outcome(mutant, result.returncode, failed, seconds, result.stdout[-3000:])


def table(outcomes: list[Outcome]) -> str:
    lines = [
        "| mutant | area | planted bug | caught by | s |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        caught = ", ".join(f"`{t}`" for t in o.failed) if o.caught else "**NOT CAUGHT**"
        lines.append(
            f"| `{o.mutant.name}` | {o.mutant.area} | {o.mutant.description} "
            f"(`{o.mutant.file}`) | {caught} | {o.seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_pipeline_mutant_is_caught(mutant: Mutant) -> None:
    outcome = run_mutant(mutant)
    verdict = "caught by " + ", ".join(outcome.failed) if outcome.caught else "NOT CAUGHT"
    print(f"\n{mutant.name}: {verdict}")
    assert outcome.caught, (
        f"mutant {mutant.name} ({mutant.description}) survived {mutant.selection} "
        f"(exit {outcome.returncode}): add the missing test\n{outcome.output}"
    )


def test_selections_pass_on_the_unmutated_tree() -> None:
    """Otherwise a failing selection would count as a catch."""
    with tempfile.TemporaryDirectory(prefix="unmutated-") as tmp:
        root = Path(tmp) / "tree"
        shutil.copytree(REPO, root, ignore=IGNORED)
        for selection in sorted({m.selection for m in MUTANTS}):
            result = run_selection(root, selection)
            assert result.returncode == 0, f"{selection} fails unmutated:\n{result.stdout[-3000:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--table", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    outcomes = []
    for mutant in chosen:
        outcomes.append(run_mutant(mutant))
        o = outcomes[-1]
        print(f"{mutant.name}: {'caught' if o.caught else 'NOT CAUGHT'} ({o.seconds:.0f} s)")
    text = table(outcomes)
    print(text)
    if args.table is not None:
        args.table.write_text(text)
    return 0 if all(o.caught for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
