"""Ray for the commands that ask for it (``--workers``, ``--ray-address``): connecting,
actors holding one device each, results and dead workers. Ray is imported only here, and
only when asked for (``rome_fast.infra.extras.import_ray``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from rome_fast.infra.extras import import_ray


@dataclass(frozen=True)
class Cluster:
    """Where to run: ``workers`` actors (None: one per device of the cluster) on the cluster
    at ``address`` (None: a local one started for the run)."""

    workers: int | None = None
    address: str | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")


@contextmanager
def connected(cluster: Cluster) -> Iterator[ModuleType]:
    """Ray connected to ``cluster``: an already connected session is used as it is; one
    started here is shut down on exit. Usage reporting is off (no network needed)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_gpus(ray: ModuleType) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def default_workers(ray: ModuleType) -> int:
    """One worker per GPU of the cluster, else one per CPU."""
    return cluster_gpus(ray) or max(1, int(ray.cluster_resources().get("CPU", 1)))


def worker_count(ray: ModuleType, cluster: Cluster) -> int:
    """``cluster.workers``, or the default; refused when the cluster cannot hold them all at
    once (an actor waiting for a device that never frees would stall the run)."""
    workers = cluster.workers or default_workers(ray)
    kind = "GPU" if cluster_gpus(ray) else "CPU"
    have = int(ray.cluster_resources().get(kind, 0))
    if workers > have:
        raise ValueError(
            f"--workers {workers} needs {workers} {kind}s but the Ray cluster has {have}; "
            f"use --workers {have} or a bigger cluster"
        )
    return workers


def actor_factory(ray: ModuleType, cls: type, prefix: str) -> Callable[..., Any]:
    """A function starting ``cls`` actors that hold one device each: a GPU where the cluster
    has them, else one CPU; never restarted by Ray (the driver decides what a lost worker's
    work becomes); named ``prefix-<random>`` so that they can be found (``ray list actors``)."""
    gpus = 1 if cluster_gpus(ray) else 0
    remote = ray.remote(cls)

    def start(*args: Any) -> Any:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        options = remote.options(
            name=name, num_cpus=0 if gpus else 1, num_gpus=gpus, max_restarts=0
        )
        return options.remote(*args)

    return start


class WorkerLost(Exception):
    """The actor died (killed, out of memory, its node lost) while computing."""


def fetch(ray: ModuleType, ref: Any) -> Any:
    """``ray.get``; an error raised inside the worker is re-raised as itself (a one-line
    ``ValueError`` stays one), a dead actor as :class:`WorkerLost`."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayActorError as err:
        raise WorkerLost(str(err)) from err
    except ray.exceptions.RayTaskError as err:
        raise err.cause from None
