"""The package import graph: no circles, and the import rule.

The rule (docs/ARCHITECTURE.md): ``rome_ref`` never imports ``rome_fast``; ``rome_fast``'s edit
path (the editors and everything they import) never imports ``rome_ref``: the reference checks
the editor's numbers, it is not part of them. The checkers (``rome_fast.testing``, the
evaluation's metrics, the tests, the benchmarks) import both.

The floors of ``rome_fast`` (docs/ARCHITECTURE.md): a folder imports only from its own folder
and the floors below it, never from a floor above or a sibling on its own floor. Imports are read
from the source (every ``import`` statement, at module level, in functions and under
``TYPE_CHECKING`` alike), so a lazy import does not hide an edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rome_fast", "rome_ref")
# Lowest first. `rome_fast.testing` (the battery) and `rome_fast.__init__` are the package's
# public front: they sit with the top floor. The pytest entry of the conformance suite reads
# its editor from the environment as `rome conform` reads it from the command line: it is a
# command, on the commands' floor.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("infra",),
    ("solve",),
    ("model",),
    ("methods",),
    ("hparams",),
    ("stats",),
    ("edit",),
    ("eval", "conform"),
    ("testing_batch",),
    ("cli", "testing", ""),
)
COMMANDS = {
    "rome_fast.conform.test_conformance": "cli",
    "rome_fast.conform.test_batch_conformance": "cli",
}
EDIT_PATH = ("rome_fast.edit.editor", "rome_fast.edit.naive")  # and everything they import


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def imported(path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The project modules ``path`` imports (``from a import b`` is ``a.b`` if that is a module)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in known:
                yield name
                break


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imported(path, known)) - {name} for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, …, a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def test_the_package_import_graph_has_no_circles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_find_cycle_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def room_of(module: str) -> str:
    """The folder of a ``rome_fast`` module (``""`` for the package itself)."""
    if module in COMMANDS:
        return COMMANDS[module]
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def floor_of(room: str) -> int:
    for floor, rooms in enumerate(FLOORS):
        if room in rooms:
            return floor
    raise AssertionError(f"rome_fast.{room} is on no floor: add it to FLOORS (and the map)")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a ``rome_fast`` module from a floor above its own or a sibling room."""
    found = []
    for name, deps in graph.items():
        if not name.startswith("rome_fast"):
            continue
        room = room_of(name)
        for dep in sorted(deps):
            other = room_of(dep) if dep.startswith("rome_fast") else None
            if other is None or other == room:
                continue
            if floor_of(other) >= floor_of(room):
                found.append(f"{name} ({room or 'root'}) imports {dep} ({other or 'root'})")
    return sorted(found)


def test_every_folder_of_rome_fast_is_on_a_floor() -> None:
    rooms = {
        path.name for path in (ROOT / "rome_fast").iterdir() if (path / "__init__.py").exists()
    }
    rooms |= {path.stem for path in (ROOT / "rome_fast").glob("*.py") if path.stem != "__init__"}
    missing = sorted(room for room in rooms if not any(room in floor for floor in FLOORS))
    assert not missing, f"rome_fast folders on no floor (add them to FLOORS and the map): {missing}"


def test_no_folder_imports_upward_or_sideways() -> None:
    found = upward_imports(import_graph())
    assert not found, "imports against the floors:\n" + "\n".join(found)


def test_upward_imports_finds_an_arrow_up_and_a_sideways_one() -> None:
    graph = {
        "rome_fast.model.hooks": {"rome_fast.edit.keys"},  # up
        "rome_fast.eval.runner": {"rome_fast.conform.run"},  # sideways, same floor
        "rome_fast.edit.keys": {"rome_fast.model.hooks", "rome_fast.edit.request"},  # fine
    }
    assert upward_imports(graph) == [
        "rome_fast.eval.runner (eval) imports rome_fast.conform.run (conform)",
        "rome_fast.model.hooks (model) imports rome_fast.edit.keys (edit)",
    ]


def test_the_reference_never_imports_rome_fast() -> None:
    graph = import_graph()
    offenders = {
        (name, dep)
        for name, deps in graph.items()
        if name.startswith("rome_ref")
        for dep in deps
        if dep.startswith("rome_fast")
    }
    assert not offenders, f"rome_ref imports rome_fast: {sorted(offenders)}"


def test_the_edit_path_never_imports_rome_ref() -> None:
    graph = import_graph()
    leaks = {
        root: sorted(dep for dep in reachable(graph, root) if dep.startswith("rome_ref"))
        for root in EDIT_PATH
    }
    assert leaks == {root: [] for root in EDIT_PATH}, f"the edit path reaches rome_ref: {leaks}"
