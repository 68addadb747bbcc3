"""Resource limits per user and per cluster, as pure functions over the clusters a user holds.

The service calls these without awaiting anything between the check and recording the result, so
on one event loop the check-and-reserve is atomic under any number of concurrent requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from traitlets import Float, Integer
from traitlets.config import Configurable


class QuotaExceeded(Exception):
    """Creating a cluster would exceed a limit; the message names the limit."""


@dataclass(frozen=True)
class Usage:
    """What one active cluster reserves: its worker ceiling times its per-worker size."""

    workers: int
    cores: float
    memory: float

    @property
    def total_cores(self) -> float:
        return self.workers * self.cores

    @property
    def total_memory(self) -> float:
        return self.workers * self.memory


@dataclass(frozen=True)
class Clamped:
    value: int
    #: Why the value was lowered (names the limit), or None when the request fit.
    reason: str | None = None


class Limits(Configurable):
    """Per-user and per-cluster limits. 0 means unlimited."""

    max_clusters_per_user = Integer(
        3, help="Active (not stopped or failed) clusters one user may hold at once; 0 = unlimited."
    ).tag(config=True)
    max_cores_per_user = Float(
        64, help="Cores one user's active clusters may reserve in total (workers × cores); 0 = unlimited."
    ).tag(config=True)
    max_memory_per_user = Float(
        256, help="Memory (GiB) one user's active clusters may reserve in total; 0 = unlimited."
    ).tag(config=True)
    max_workers_per_cluster = Integer(
        50, help="Workers one cluster may have (scale and adapt requests are clamped); 0 = unlimited."
    ).tag(config=True)
    max_cores_per_cluster = Float(
        64, help="Cores one cluster may reserve (workers × cores per worker); 0 = unlimited."
    ).tag(config=True)
    max_memory_per_cluster = Float(
        256, help="Memory (GiB) one cluster may reserve; 0 = unlimited."
    ).tag(config=True)


def _cap(limit: float, per_worker: float) -> float:
    return math.inf if not limit or per_worker <= 0 else math.floor(limit / per_worker + 1e-9)


def worker_cap(limits: Limits, new: Usage, others: Iterable[Usage]) -> Clamped:
    """The largest worker count the cluster ``new`` may reserve, given the owner's ``others``."""
    others = list(others)
    used_cores = sum(u.total_cores for u in others)
    used_memory = sum(u.total_memory for u in others)
    caps = [
        (limits.max_workers_per_cluster or math.inf, "max_workers_per_cluster"),
        (_cap(limits.max_cores_per_cluster, new.cores), "max_cores_per_cluster"),
        (_cap(limits.max_memory_per_cluster, new.memory), "max_memory_per_cluster"),
        (
            _cap(limits.max_cores_per_user - used_cores, new.cores) if limits.max_cores_per_user else math.inf,
            "max_cores_per_user",
        ),
        (
            _cap(limits.max_memory_per_user - used_memory, new.memory) if limits.max_memory_per_user else math.inf,
            "max_memory_per_user",
        ),
    ]
    value, name = min(caps, key=lambda c: c[0])
    return Clamped(max(0, int(value)) if value != math.inf else 2**31 - 1, name)


def clamp_workers(limits: Limits, new: Usage, others: Iterable[Usage]) -> Clamped:
    """``new.workers`` lowered to what the limits allow; ``reason`` names the limit that bit."""
    cap = worker_cap(limits, new, others)
    if new.workers <= cap.value:
        return Clamped(new.workers)
    return Clamped(cap.value, f"clamped to {cap.value} workers by limit {cap.reason}")


def check_create(limits: Limits, new: Usage, others: Iterable[Usage]) -> None:
    """Raise :class:`QuotaExceeded` if one more cluster reserving ``new`` breaks a limit."""
    others = list(others)
    if limits.max_clusters_per_user and len(others) >= limits.max_clusters_per_user:
        raise QuotaExceeded(
            f"limit max_clusters_per_user: at most {limits.max_clusters_per_user} active clusters"
        )
    cap = worker_cap(limits, new, others)
    if new.workers > cap.value:
        raise QuotaExceeded(f"limit {cap.reason}: at most {cap.value} workers for this cluster")
