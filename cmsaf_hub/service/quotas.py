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
    """Creating a cluster would exceed a limit; the message names the limit, the usage and its unit."""


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
    #: Why the value was lowered (names the limit, the usage and the unit), or None when it fit.
    reason: str | None = None


class Limits(Configurable):
    """Per-user and per-cluster limits. 0 means unlimited."""

    max_clusters_per_user = Integer(
        3,
        help="Clusters one user may hold at once (pending, starting or running; one asked to stop no longer "
        "counts, for this and every per-user limit); 0 = unlimited.",
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


@dataclass(frozen=True)
class Budget:
    """One configured limit as seen by one request: how much is left and what that allows."""

    #: The Limits trait, e.g. ``max_cores_per_user``.
    name: str
    #: The configured limit and the unit it counts in ("workers", "cores" or "GiB").
    limit: float
    unit: str
    #: What the owner's other active clusters already reserve (per-user limits only).
    used: float | None
    #: What one worker of the cluster costs, in ``unit``.
    per_worker: float

    @property
    def workers(self) -> int:
        """The most workers that fit in what is left (0 when it is used up or overdrawn)."""
        left = self.limit - (self.used or 0)
        if self.per_worker <= 0:
            return _UNBOUNDED
        return max(0, math.floor(left / self.per_worker + 1e-9))

    def describe(self, workers: int) -> str:
        """The limit, the usage and what ``workers`` would ask for, all in the limit's own unit."""
        text = f"limit {self.name} is {_amount(self.limit, self.unit)}"
        if self.used is not None:
            text += f"; your other active clusters reserve {_amount(self.used, self.unit)}"
        if self.unit == "workers":
            return f"{text}; this cluster asks for {_amount(workers, 'workers')}"
        asked = _amount(workers * self.per_worker, self.unit)
        return (f"{text}; this cluster asks for {_amount(workers, 'workers')} × "
                f"{_amount(self.per_worker, self.unit)} = {asked}")


#: What "no limit" allows: any count a request can carry.
_UNBOUNDED = 2**31 - 1


def _amount(value: float, unit: str) -> str:
    number = f"{value:g}"
    if unit == "workers" and value == 1:
        return "1 worker"
    if unit == "cores" and value == 1:
        return "1 core"
    return f"{number} {unit}"


def budgets(limits: Limits, new: Usage, others: Iterable[Usage]) -> list[Budget]:
    """Every configured (non-zero) limit that bounds the worker count of the cluster ``new``.

    A limit of 0 is "unlimited" and has no budget; a per-user limit whose remainder is 0 or less is a
    budget of 0 workers, never "unlimited".
    """
    others = list(others)
    used_cores = sum(u.total_cores for u in others)
    used_memory = sum(u.total_memory for u in others)
    candidates = [
        Budget("max_workers_per_cluster", limits.max_workers_per_cluster, "workers", None, 1),
        Budget("max_cores_per_cluster", limits.max_cores_per_cluster, "cores", None, new.cores),
        Budget("max_memory_per_cluster", limits.max_memory_per_cluster, "GiB", None, new.memory),
        Budget("max_cores_per_user", limits.max_cores_per_user, "cores", used_cores, new.cores),
        Budget("max_memory_per_user", limits.max_memory_per_user, "GiB", used_memory, new.memory),
    ]
    return [b for b in candidates if b.limit]


def worker_cap(limits: Limits, new: Usage, others: Iterable[Usage]) -> tuple[int, Budget | None]:
    """The largest worker count the cluster ``new`` may reserve given the owner's ``others``, and
    the limit that sets it (None when nothing does)."""
    tightest = min(budgets(limits, new, others), key=lambda b: b.workers, default=None)
    return (tightest.workers, tightest) if tightest else (_UNBOUNDED, None)


def clamp_workers(limits: Limits, new: Usage, others: Iterable[Usage]) -> Clamped:
    """``new.workers`` lowered to what the limits allow; ``reason`` names the limit that bit, what is
    used and what was asked, in the limit's unit."""
    cap, budget = worker_cap(limits, new, others)
    if budget is None or new.workers <= cap:
        return Clamped(new.workers)
    return Clamped(cap, f"clamped to {_amount(cap, 'workers')}: {budget.describe(new.workers)}")


def check_create(limits: Limits, new: Usage, others: Iterable[Usage]) -> None:
    """Raise :class:`QuotaExceeded` if one more cluster reserving ``new`` breaks a limit."""
    others = list(others)
    if limits.max_clusters_per_user and len(others) >= limits.max_clusters_per_user:
        raise QuotaExceeded(
            f"limit max_clusters_per_user is {limits.max_clusters_per_user}: you hold {len(others)} active "
            f"cluster{'' if len(others) == 1 else 's'}; stop one to create another"
        )
    cap, budget = worker_cap(limits, new, others)
    if budget is not None and new.workers > cap:
        raise QuotaExceeded(f"{budget.describe(new.workers)}; at most {_amount(cap, 'workers')} fit")
