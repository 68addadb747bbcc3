"""The service's cluster model JSON, parsed into typed read-only objects."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: Statuses from which a cluster never runs again.
ENDING_STATUSES = frozenset({"stopping", "stopped", "failed"})
#: The status in which the scheduler accepts clients.
RUNNING = "running"
#: Every status the service reports, in lifecycle order.
STATUSES = ("pending", "starting", "running", "stopping", "stopped", "failed")
#: What listings show by default, like dask-gateway's ``list_clusters``: clusters that run or will.
ACTIVE_STATUSES = ("pending", "starting", "running")


def select_statuses(status: str | Iterable[str] | None) -> frozenset[str]:
    """The statuses a listing keeps: ``None`` → the active ones, ``"all"`` → every one, or the names given."""
    if status is None:
        return frozenset(ACTIVE_STATUSES)
    names = [status] if isinstance(status, str) else list(status)
    if names == ["all"]:
        return frozenset(STATUSES)
    unknown = [n for n in names if n not in STATUSES]
    if unknown:
        raise ValueError(f"unknown cluster status {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(STATUSES)} (or 'all')")
    return frozenset(names)


@dataclass(frozen=True)
class WorkerCounts:
    """Worker progress as the service reports it: how many asked for and where they are."""

    requested: int = 0
    pending: int = 0  # waiting in the batch queue
    running: int = 0
    held: int = 0
    failed: int = 0
    held_reasons: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> WorkerCounts:
        data = data or {}
        return cls(
            requested=int(data.get("requested", 0)),
            pending=int(data.get("pending", 0)),
            running=int(data.get("running", 0)),
            held=int(data.get("held", 0)),
            failed=int(data.get("failed", 0)),
            held_reasons=tuple(data.get("held_reasons") or ()),
        )


@dataclass(frozen=True)
class ClusterReport:
    """One cluster as ``GET /clusters/{id}`` described it (architecture.md, "Cluster model")."""

    id: str
    owner: str
    status: str
    reason: str | None
    options: dict[str, Any]
    dashboard_link: str | None
    scheduler_address: str | None
    workers: WorkerCounts
    adapt: dict[str, int] | None
    created: str | None
    started: str | None
    stopped: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterReport:
        return cls(
            id=data["id"],
            owner=data.get("owner", ""),
            status=data.get("status", "unknown"),
            reason=data.get("reason"),
            options=dict(data.get("options") or {}),
            dashboard_link=data.get("dashboard_link"),
            # the fast path (Dask's TLS comm through the hub) when the service offers it, else the ws relay
            scheduler_address=data.get("fast_scheduler_address") or data.get("scheduler_address"),
            workers=WorkerCounts.from_json(data.get("workers")),
            adapt=data.get("adapt"),
            created=data.get("created"),
            started=data.get("started"),
            stopped=data.get("stopped"),
            raw=data,
        )

    @property
    def is_ending(self) -> bool:
        return self.status in ENDING_STATUSES
