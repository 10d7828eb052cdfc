"""``--workers`` / ``--ray-address`` without a cluster: Ray stays out of a plain run, a missing
Ray is a one-line error with the install command, impossible worker counts are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rome_fast.cli.main import main
from rome_fast.infra.cluster import Cluster

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = "counterfact/counterfact-rome-schema-sample.json"
BATCHED = ["--method", "memit", "--batch-size", "2"]  # as ROME's runs, refused only for Ray


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "--model", "random:tiny-gpt2", "--workers", "2", "--out", "OUT"],
        ["eval", "--model", "random:tiny-gpt2", "--ray-address", "auto", "--out", "OUT"],
        ["eval", "--model", "random:tiny-gpt2", *BATCHED, "--workers", "2", "--out", "OUT"],
        ["stats", "--model", "random:tiny-gpt2", "--workers", "2"],
    ],
)
def test_a_missing_ray_is_one_line_naming_the_install(
    command: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    argv = [str(tmp_path / "run") if a == "OUT" else a for a in command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "pip install 'rome-verify[ray]'" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Cluster(workers=0)


@pytest.mark.slow
def test_a_plain_run_never_imports_ray(tmp_path: Path) -> None:
    check = (
        "import sys; from rome_fast.cli.main import main; code = main(sys.argv[1:]); "
        "assert 'ray' not in sys.modules, 'a run without --workers imported ray'; "
        "sys.exit(code)"
    )
    args = ["eval", "--model", "random:tiny-gpt2", "--data", SAMPLE, "--limit", "1"]
    args += ["--variants", "r-rome", "--generations", "1", "--generation-tokens", "2"]
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", check, *args, "--out", str(tmp_path / "run")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
