"""The service's records of clusters and workers, their states, and the cluster's JSON model.

Records are plain dataclasses held in memory by :mod:`cmsaf_hub.service.store` (which persists them);
``status`` is what is observed, ``target`` what was asked for; only the reconciler moves a status.
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass, field
from typing import Any

from .quotas import Usage


class ClusterStatus(str, enum.Enum):
    PENDING = "pending"  # recorded, nothing started yet
    STARTING = "starting"  # the scheduler is being started
    RUNNING = "running"  # the scheduler accepts connections
    STOPPING = "stopping"  # everything is being stopped
    STOPPED = "stopped"  # stopped on request, idleness, lifetime or owner removal
    FAILED = "failed"  # stopped because something broke; ``reason`` says what

    @property
    def active(self) -> bool:
        return self not in (ClusterStatus.STOPPED, ClusterStatus.FAILED)


class ClusterTarget(str, enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"  # stop everything, then report the cluster failed with its reason


class WorkerStatus(str, enum.Enum):
    PENDING = "pending"  # submitted, not running yet
    HELD = "held"  # the batch system holds it
    RUNNING = "running"
    STOPPING = "stopping"  # asked to stop, not yet confirmed gone


#: Worker statuses that count toward the cluster's worker target.
LIVE_WORKER_STATUSES = (WorkerStatus.PENDING, WorkerStatus.HELD, WorkerStatus.RUNNING)


@dataclass
class WorkerRecord:
    cluster_id: str
    name: str
    status: WorkerStatus = WorkerStatus.PENDING
    reason: str | None = None
    backend_state: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0


@dataclass
class ClusterRecord:
    id: str
    owner: str
    options: dict[str, Any]
    created: float
    status: ClusterStatus = ClusterStatus.PENDING
    target: ClusterTarget = ClusterTarget.RUNNING
    reason: str | None = None
    #: Workers wanted now (scale sets it; adaptivity moves it within ``adapt``).
    worker_target: int = 0
    adapt_minimum: int | None = None
    adapt_maximum: int | None = None
    scheduler_address: str | None = None
    dashboard_address: str | None = None
    backend_state: dict[str, Any] = field(default_factory=dict)
    tls_cert: str = ""
    #: The TLS private key, Fernet-encrypted: never decrypted into the record.
    tls_key_encrypted: bytes = field(default=b"", repr=False)
    workers_failed_total: int = 0
    #: Worker failures since a worker last reached running (limit → cluster fails).
    workers_failed_in_row: int = 0
    started: float | None = None
    stopped: float | None = None
    #: Last time the scheduler was seen busy (idle culling).
    last_activity: float | None = None
    workers: dict[str, WorkerRecord] = field(default_factory=dict)

    @property
    def adaptive(self) -> bool:
        return self.adapt_maximum is not None

    @property
    def counts_against_limits(self) -> bool:
        """Active and not asked to stop: a cluster on its way out frees its owner's share at once (as
        dask-gateway's ``is_active``), so closing one and creating the next is never refused."""
        return self.status.active and self.target is ClusterTarget.RUNNING

    def reserved_usage(self) -> Usage:
        """What the cluster counts against its owner's quota: its highest possible worker count."""
        workers = max(self.worker_target, self.adapt_maximum or 0)
        return Usage(workers, float(self.options.get("cores") or 0), float(self.options.get("memory") or 0))

    def live_workers(self) -> list[WorkerRecord]:
        return [w for w in self.workers.values() if w.status in LIVE_WORKER_STATUSES]

    def worker_counts(self) -> dict[str, Any]:
        by_status = {s: 0 for s in WorkerStatus}
        for w in self.workers.values():
            by_status[w.status] += 1
        return {
            "requested": self.worker_target,
            "pending": by_status[WorkerStatus.PENDING],
            "running": by_status[WorkerStatus.RUNNING],
            "held": by_status[WorkerStatus.HELD],
            "failed": self.workers_failed_total,
            "held_reasons": sorted(
                {w.reason for w in self.workers.values() if w.status is WorkerStatus.HELD and w.reason}
            ),
        }


def isotime(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cluster_model(record: ClusterRecord, *, public_base: str) -> dict[str, Any]:
    """The cluster's JSON model (docs/architecture.md); ``public_base`` is the public service URL.

    ``public_base`` is e.g. ``https://hub.example/services/cmsaf/``; addresses point at the hub's
    proxy, never at the scheduler itself.
    """
    base = public_base.rstrip("/")
    ws_base = "wss://" + base[len("https://"):] if base.startswith("https://") else (
        "ws://" + base[len("http://"):] if base.startswith("http://") else base
    )
    running = record.status is ClusterStatus.RUNNING
    return {
        "id": record.id,
        "owner": record.owner,
        "options": record.options,
        "status": record.status.value,
        "reason": record.reason,
        "dashboard_link": f"{base}/clusters/{record.id}/dashboard/status" if running else None,
        "scheduler_address": f"{ws_base}/clusters/{record.id}/comm" if running else None,
        "workers": record.worker_counts(),
        "adapt": (
            {"minimum": record.adapt_minimum, "maximum": record.adapt_maximum} if record.adaptive else None
        ),
        "created": isotime(record.created),
        "started": isotime(record.started),
        "stopped": isotime(record.stopped),
    }
