"""One writer per run folder: an advisory lock on ``<out>/.lock`` that names its holder.

The lock is ``fcntl.flock`` on the file, so the kernel releases it when the holding
process ends in any way (exit, exception, SIGKILL): a lock file left behind by a killed
run never blocks a resume, while a live holder refuses a second writer at once. The file
holds the holder's pid, host and start time, for the refusal message. Within one
process the lock is re-entrant (``rome eval`` takes it before loading the model, so that a
second writer is refused at once, and the runner takes it again around the run).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lock"
_held: dict[Path, int] = {}  # folders this process holds -> nesting depth


class FolderLockedError(ValueError):
    """Another live process is writing into the run folder."""


def _holder(handle: int) -> str:
    text = os.pread(handle, 4096, 0).decode("utf-8", errors="replace")
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (json.JSONDecodeError, KeyError, TypeError):
        return "a process that has not written its details yet"


@contextmanager
def run_folder_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock for the block; a second holder gets ``FolderLockedError``."""
    out.mkdir(parents=True, exist_ok=True)
    key = out.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    handle = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderLockedError(
                f"{out} is being written by another run ({_holder(handle)}); wait for it "
                "to finish or stop it, or choose another --out"
            ) from None
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
        os.ftruncate(handle, 0)
        os.pwrite(handle, json.dumps(info).encode(), 0)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
            os.ftruncate(handle, 0)  # no stale details; the file itself may stay
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        os.close(handle)
