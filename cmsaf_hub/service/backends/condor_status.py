"""Pure translation of HTCondor job ads (queue and history) into backend observations.

HTCondor's ``JobStatus`` codes and removal reasons become :class:`WorkerPhase` values here, in one
table, so the poll loop in :mod:`cmsaf_hub.service.backends.htcondor` only does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .base import ClusterObservation, WorkerObservation, WorkerPhase
from .condor_jobs import ATTR_CLUSTER, ATTR_INPUTS, ATTR_ROLE, ROLE_INPUTS, ROLE_SCHEDULER, ROLE_WORKER, job_id

#: Prefix of the RemoveReason of every removal the backend asks for (not a failure when seen later).
REMOVED_BY_US = "cmsaf: "

IDLE, RUNNING, REMOVED, COMPLETED, HELD, TRANSFERRING_OUTPUT, SUSPENDED = 1, 2, 3, 4, 5, 6, 7

#: ``HoldReasonCode`` values (``CONDOR_HOLD_CODE`` in HTCondor's src/condor_utils/condor_holdcodes.h).
HOLD_USER_REQUEST = 1
HOLD_TRANSFER_INPUT_ERROR = 13
#: The schedd's own hold of a spooled job until its input files arrive ("Spooling input data
#: files"); it releases the job itself. Not a failure: the job is still on its way to the queue.
HOLD_SPOOLING_INPUT = 16

#: JobStatus of a job still in the queue -> phase.
QUEUE_PHASES: dict[int, WorkerPhase] = {
    IDLE: WorkerPhase.QUEUED,
    RUNNING: WorkerPhase.RUNNING,
    REMOVED: WorkerPhase.EXITED,
    COMPLETED: WorkerPhase.EXITED,
    HELD: WorkerPhase.HELD,
    TRANSFERRING_OUTPUT: WorkerPhase.RUNNING,
    SUSPENDED: WorkerPhase.QUEUED,
}


@dataclass
class PollResult:
    """Observations plus the held jobs the poll decided to remove (``{job id: reason}``)."""

    clusters: dict[str, ClusterObservation] = field(default_factory=dict)
    remove_held: dict[str, str] = field(default_factory=dict)


def held_too_long(ad: Mapping[str, Any], now: float, limit: int) -> bool:
    if ad.get("HoldReasonCode") == HOLD_SPOOLING_INPUT:
        return False
    entered = ad.get("EnteredCurrentStatus")
    return bool(limit) and isinstance(entered, (int, float)) and now - entered > limit


def phase_of_queued(ad: Mapping[str, Any]) -> tuple[WorkerPhase, str | None]:
    """Phase and reason of a job that is still in the queue."""
    status = ad.get("JobStatus")
    phase = QUEUE_PHASES.get(status, WorkerPhase.QUEUED)
    if phase is WorkerPhase.HELD and ad.get("HoldReasonCode") == HOLD_SPOOLING_INPUT:
        return WorkerPhase.QUEUED, None  # told apart by its code: any other hold replaces it
    if phase is WorkerPhase.HELD:
        return phase, str(ad.get("HoldReason") or "held by HTCondor")
    if status == COMPLETED and ad.get("ExitCode") not in (0, None):
        return WorkerPhase.FAILED, f"exited with code {ad.get('ExitCode')}"
    if status == REMOVED:  # removed jobs linger in the queue (state X) before they reach the history
        return phase_of_finished(ad)
    return phase, None


def phase_of_finished(ad: Mapping[str, Any] | None) -> tuple[WorkerPhase, str | None]:
    """Phase and reason of a job that left the queue (looked up in the history)."""
    if ad is None:
        return WorkerPhase.FAILED, "job left the queue and is not in the schedd's history"
    status = ad.get("JobStatus")
    if status == COMPLETED and ad.get("ExitCode") in (0, None):
        return WorkerPhase.EXITED, None
    if status == COMPLETED:
        return WorkerPhase.FAILED, f"exited with code {ad.get('ExitCode')}"
    reason = ad.get("RemoveReason") or ad.get("HoldReason")
    if isinstance(reason, str) and reason.startswith(REMOVED_BY_US):
        return WorkerPhase.EXITED, None
    return WorkerPhase.FAILED, f"removed by HTCondor: {reason}" if reason else "removed by HTCondor"


def observe(
    clusters: Mapping[str, Mapping[str, Any]],
    queue_ads: Iterable[Mapping[str, Any]],
    history_ads: Iterable[Mapping[str, Any]],
    *,
    now: float,
    held_limit: int,
    scheduler_in_queue: bool,
) -> PollResult:
    """Build one observation per cluster.

    ``clusters`` maps cluster id to the workers the service believes exist (``{name: state}``).
    Worker jobs of a known cluster that the service does not know appear too (to be adopted).
    With ``scheduler_in_queue`` the scheduler is a job and its liveness is read from the queue;
    otherwise ``scheduler_alive`` is left True for the caller to fill in.
    """
    result = PollResult()
    by_cluster: dict[str, dict[str, Mapping[str, Any]]] = {cid: {} for cid in clusters}
    schedulers: dict[str, Mapping[str, Any]] = {}
    for ad in queue_ads:
        cid = ad.get(ATTR_CLUSTER)
        if cid not in by_cluster:
            continue
        if ad.get(ATTR_ROLE) == ROLE_SCHEDULER:
            schedulers[cid] = ad
        elif ad.get(ATTR_ROLE) == ROLE_WORKER:
            by_cluster[cid][job_id(ad)] = ad
    history = {job_id(ad): ad for ad in history_ads}

    for cid, known in clusters.items():
        obs = ClusterObservation(scheduler_alive=True)
        if scheduler_in_queue:
            sched = schedulers.get(cid)
            if sched is None:
                obs.scheduler_alive, obs.scheduler_reason = False, "scheduler job left the queue"
            else:
                phase, reason = phase_of_queued(sched)
                obs.scheduler_alive = phase is WorkerPhase.RUNNING
                if not obs.scheduler_alive:
                    obs.scheduler_reason = reason or f"scheduler job is {phase.value}"
        queued = by_cluster[cid]
        for name in set(known) | set(queued):
            ad = queued.get(name)
            if ad is None:
                phase, reason = phase_of_finished(history.get(name))
            else:
                phase, reason = phase_of_queued(ad)
                if phase is WorkerPhase.HELD and held_too_long(ad, now, held_limit):
                    reason = f"removed after being held longer than {held_limit} s: {reason}"
                    result.remove_held[name] = reason
                    phase = WorkerPhase.FAILED
            obs.workers[name] = WorkerObservation(name=name, phase=phase, reason=reason)
        result.clusters[cid] = obs
    return result


def missing_jobs(clusters: Mapping[str, Mapping[str, Any]], queue_ads: Iterable[Mapping[str, Any]]) -> list[str]:
    """Worker names the service knows that are no longer in the queue (to look up in history)."""
    present = {job_id(ad) for ad in queue_ads}
    return sorted(name for known in clusters.values() for name in known if name not in present)


def history_constraint(job_ids: Iterable[str]) -> str:
    """A history constraint for exact job ids (``ClusterId.ProcId``)."""
    parts = []
    for jid in sorted(job_ids):
        cluster, proc = (int(x) for x in jid.split("."))
        parts.append(f"(ClusterId == {cluster} && ProcId == {proc})")
    return " || ".join(parts)


def least_loaded_schedd(ads: list[dict[str, Any]]) -> str | None:
    """The schedd with the fewest running + idle jobs (ties: by name); None if there is none."""
    named = [ad for ad in ads if ad.get("Name")]
    if not named:
        return None
    load = lambda ad: (int(ad.get("TotalRunningJobs") or 0) + int(ad.get("TotalIdleJobs") or 0), ad["Name"])  # noqa: E731
    return min(named, key=load)["Name"]


def act_shortfall(result: Mapping[str, Any], job_ids: list[str]) -> str | None:
    """Why a removal of ``job_ids`` did not fully happen, from ``Schedd.act()``'s totals; None if it did.

    The schedd answers a refused action with totals, not an error (e.g. another user's jobs:
    ``TotalPermissionDenied``); jobs already removed or gone from the queue count as done.
    """
    done = sum(int(result.get(k) or 0) for k in ("TotalSuccess", "TotalAlreadyDone", "TotalNotFound"))
    if done >= len(job_ids):
        return None
    counts = {"permission denied": "TotalPermissionDenied", "in a state that cannot be removed": "TotalBadStatus",
              "failed": "TotalError"}
    details = [f"{int(result.get(key) or 0)} {what}" for what, key in counts.items() if result.get(key)]
    return f"HTCondor removed {done} of {len(job_ids)} jobs" + (f" ({', '.join(details)})" if details else "")


def unused_inputs_jobs(queue_ads: Iterable[Mapping[str, Any]], keep: Iterable[str], *, now: float,
                       grace: float) -> list[str]:
    """Inputs jobs (role ``inputs``) no worker in the queue reads from, queued more than ``grace``
    seconds ago (their workers may be on their way), except ``keep``."""
    ads = list(queue_ads)
    keep = set(keep)
    used = {ad.get(ATTR_INPUTS) for ad in ads if ad.get(ATTR_ROLE) == ROLE_WORKER and ad.get("JobStatus") != REMOVED}
    return sorted(
        job_id(ad) for ad in ads
        if ad.get(ATTR_ROLE) == ROLE_INPUTS and ad.get("JobStatus") != REMOVED and job_id(ad) not in used
        and job_id(ad) not in keep and isinstance(ad.get("QDate"), (int, float)) and now - ad["QDate"] > grace
    )
