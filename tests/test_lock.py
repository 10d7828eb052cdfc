"""One writer per run folder, with real processes: a live holder refuses a second
``rome eval`` at once, naming itself; a holder killed with SIGKILL blocks nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from rome_fast.eval.lock import FolderLockedError, run_folder_lock

ROOT = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from rome_fast.eval.lock import run_folder_lock
    with run_folder_lock(Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(600)
    """
)


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A second process holding the lock of ``tmp_path / "run"``; killed at the end."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        text=True,
        env=environment(),
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "locked"
        yield process
        process.kill()


def test_second_eval_is_refused_at_once_naming_the_holder(
    holder: subprocess.Popen[str], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    before = sorted(p.name for p in out.iterdir())
    done = subprocess.run(
        [
            *(sys.executable, "-m", "rome_fast.cli.main", "eval"),
            *("--model", "random:tiny-gpt2", "--modes", "single", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"pid {holder.pid} on {socket.gethostname()}" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written


def test_lock_of_a_killed_process_does_not_block(
    holder: subprocess.Popen[str], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with pytest.raises(FolderLockedError, match=f"pid {holder.pid}"), run_folder_lock(out):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / ".lock").exists()  # left behind by the kill
    with run_folder_lock(out):
        assert str(os.getpid()) in (out / ".lock").read_text()


def test_lock_is_reentrant_within_a_process(tmp_path: Path) -> None:
    with run_folder_lock(tmp_path), run_folder_lock(tmp_path):
        pass
    with run_folder_lock(tmp_path):  # and released after the outer block
        pass
