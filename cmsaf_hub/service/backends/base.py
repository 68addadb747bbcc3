"""The one small interface between the cluster service and the places Dask runs.

Backends do I/O only. They never decide what a cluster *should* be: the reconciler compares the
database's targets with what :meth:`Backend.poll` observes and calls the other methods to close the
gap. Everything a backend needs to find its resources again after a service restart goes into the
opaque ``backend_state`` dicts, which the service persists for it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from traitlets.config import LoggingConfigurable


class WorkerPhase(str, enum.Enum):
    """What a backend can observe about one worker."""

    QUEUED = "queued"  # accepted by the backend, not yet running (waiting in a batch queue)
    HELD = "held"  # the batch system holds it; ``reason`` says why
    RUNNING = "running"  # the worker's process/job runs
    EXITED = "exited"  # finished or removed, normally
    FAILED = "failed"  # died or was rejected; ``reason`` says why


@dataclass
class ClusterSpec:
    """What a backend is told about a cluster on every call."""

    id: str
    owner: str
    options: dict[str, Any]
    #: Environment for the scheduler and workers (Dask config, token file locations...).
    env: dict[str, str] = field(default_factory=dict)
    #: PEM TLS material shared by the cluster's scheduler and workers: ``{"cert": ..., "key": ...}``.
    #: A per-cluster secret: never log it.
    tls: dict[str, str] = field(default_factory=dict, repr=False)
    #: The owner's exchanged tokens at call time, ``{name: jwt}``. Never log them.
    tokens: dict[str, str] = field(default_factory=dict, repr=False)
    #: What :meth:`Backend.start_scheduler` returned earlier, if anything.
    backend_state: dict[str, Any] = field(default_factory=dict)
    #: URL path the scheduler's dashboard must serve under (``dask scheduler --dashboard-prefix``),
    #: so the hub's relay can pass paths through unchanged; "" serves it at the root.
    dashboard_prefix: str = ""


@dataclass
class SchedulerInfo:
    """Where a freshly started scheduler listens, as the service reaches it."""

    address: str  # e.g. "tls://10.0.0.5:8786"
    dashboard_address: str  # e.g. "http://10.0.0.5:8787"
    backend_state: dict[str, Any] = field(default_factory=dict)


@dataclass
class SubmittedWorker:
    """One worker accepted by the backend; ``name`` is the Dask worker name it will use."""

    name: str
    backend_state: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorkerObservation:
    name: str
    phase: WorkerPhase
    reason: str | None = None


@dataclass
class ClusterObservation:
    """One cluster as the backend sees it in a single bulk poll."""

    scheduler_alive: bool
    scheduler_reason: str | None = None
    workers: dict[str, WorkerObservation] = field(default_factory=dict)


class BackendError(Exception):
    """A backend call failed; the message is safe to show the cluster's owner."""

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class Backend(LoggingConfigurable):
    """Base class of cluster backends. Subclasses implement every coroutine below."""

    async def start(self) -> None:
        """Called once when the service starts, before any other method."""

    async def close(self) -> None:
        """Called once when the service stops. Must not stop running clusters."""

    async def start_scheduler(self, cluster: ClusterSpec) -> SchedulerInfo:
        """Start the cluster's scheduler and return once it accepts connections."""
        raise NotImplementedError

    async def submit_workers(self, cluster: ClusterSpec, count: int) -> list[SubmittedWorker]:
        """Submit ``count`` workers in one backend call; names are chosen by the backend."""
        raise NotImplementedError

    async def stop_workers(self, cluster: ClusterSpec, workers: dict[str, dict[str, Any]]) -> None:
        """Stop the named workers (``{name: backend_state}``); already-gone workers are fine."""
        raise NotImplementedError

    async def poll(self, clusters: list[ClusterSpec]) -> dict[str, ClusterObservation]:
        """Observe many clusters at once (one query per batch system, not one per cluster).

        Each ``ClusterSpec`` carries, in ``backend_state["workers"]``, the ``{name: backend_state}``
        of the workers the service believes exist.
        """
        raise NotImplementedError

    async def stop_cluster(self, cluster: ClusterSpec) -> None:
        """Stop the scheduler and every worker of the cluster; idempotent."""
        raise NotImplementedError

    async def logs(self, cluster: ClusterSpec) -> dict[str, str]:
        """Recent log text keyed by ``"scheduler"`` and worker names."""
        raise NotImplementedError

    async def list_cluster_ids(self) -> set[str]:
        """Ids of every cluster the backend still holds resources for (restart reconciliation)."""
        raise NotImplementedError

    async def remove_cluster_resources(self, cluster_id: str) -> None:
        """Remove everything of a cluster the database no longer knows (orphans)."""
        raise NotImplementedError
