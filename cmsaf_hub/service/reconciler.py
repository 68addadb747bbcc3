"""Moves every cluster and worker from its observed status toward its target.

Handlers only record targets (``worker_target``, ``target``) and enqueue the cluster id; this
module does all backend I/O. One task per cluster at a time (:class:`WorkQueue`); a periodic bulk
``poll`` turns backend observations into worker statuses; periodic checks apply adaptivity, idle
culling and the maximum lifetime. Every step is safe to repeat, so after a service restart the
same code resumes unfinished transitions and re-adopts running clusters.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from traitlets import Float, Instance, Integer
from traitlets.config import LoggingConfigurable

from .backends.base import Backend, BackendError, ClusterSpec, WorkerPhase
from .cluster_tokens import ClusterTokenKeeper
from .crypto import CryptError, SecretBox
from .hubapi import HubAPIError
from .models import (
    ClusterRecord,
    ClusterStatus,
    ClusterTarget,
    WorkerRecord,
    WorkerStatus,
)
from .probe import SchedulerProbe, client_security
from .store import Store
from .workqueue import WorkQueue

TokensProvider = Callable[[str], Awaitable[dict[str, str]]]


class Reconciler(LoggingConfigurable):
    """The cluster service's control loop."""

    poll_interval = Float(2.0, help="Seconds between bulk polls of the backend.").tag(config=True)
    activity_interval = Float(
        5.0, help="Seconds between asking running schedulers for idleness and adaptive targets."
    ).tag(config=True)
    concurrency = Integer(8, help="Clusters reconciled at the same time.").tag(config=True)
    probe_concurrency = Integer(16, help="Schedulers asked for their activity at the same time.").tag(config=True)
    start_attempts = Integer(
        3, help="Attempts to start a scheduler (retryable backend errors) before the cluster fails."
    ).tag(config=True)
    worker_failure_limit = Integer(
        5, help="Worker failures in a row (no worker reached running in between) that fail the cluster."
    ).tag(config=True)
    idle_timeout = Float(
        0, help="Stop a running cluster whose scheduler had no work for this many seconds; 0 = never."
    ).tag(config=True)
    max_lifetime = Float(
        0, help="Stop a cluster this many seconds after it started running; 0 = no limit."
    ).tag(config=True)
    stopped_retention = Float(
        24 * 3600, help="Seconds a stopped or failed cluster stays listed before it is forgotten."
    ).tag(config=True)
    backoff_base = Float(0.5, help="First retry delay (s) after a failed reconcile step.").tag(config=True)
    backoff_max = Float(60.0, help="Longest retry delay (s) after failed reconcile steps.").tag(config=True)

    backend = Instance(Backend)
    store = Instance(Store)
    secrets = Instance(SecretBox)

    def __init__(self, *, tokens_provider: TokensProvider | None = None, probe: SchedulerProbe | None = None,
                 token_keeper: ClusterTokenKeeper | None = None, **kw):
        super().__init__(**kw)
        self.tokens_provider = tokens_provider
        if tokens_provider is not None and self.backend is not None and self.backend.has_trait("tokens_provider"):
            self.backend.tokens_provider = tokens_provider  # e.g. HTCondor: remove orphans as their owner
        self.token_keeper = token_keeper
        self.probe = probe or SchedulerProbe()
        self.queue = WorkQueue(backoff_base=self.backoff_base, backoff_max=self.backoff_max)
        self.env_hook: Callable[[ClusterRecord], dict[str, str]] = lambda record: {}
        self.dashboard_prefix_hook: Callable[[str], str] = lambda cluster_id: ""
        self._tasks: list[asyncio.Task] = []

    # -- entry points --------------------------------------------------------------------------

    async def start(self) -> None:
        """Adopt what the database and the backend hold, then run the loops."""
        await self.adopt()
        self._tasks = [asyncio.create_task(self._work_loop(), name=f"reconcile-{i}") for i in range(self.concurrency)]
        self._tasks.append(asyncio.create_task(self._periodic(self.poll_interval, self.poll_once), name="poll"))
        self._tasks.append(
            asyncio.create_task(self._periodic(self.activity_interval, self.check_activity), name="activity")
        )
        if self.token_keeper is not None:
            self._tasks.append(
                asyncio.create_task(self._periodic(self.token_keeper.interval, self.refresh_tokens), name="tokens")
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.queue.close()

    def enqueue(self, cluster_id: str) -> None:
        self.queue.put(cluster_id)

    async def adopt(self) -> None:
        """Restart reconciliation: remove what only the backend has, then queue every unfinished cluster.

        Before anything is queued, one poll folds in what the backend runs and stops the workers the
        database does not list (submitted just before the service died): otherwise the queued step
        would start their replacements first, and the cluster would briefly run more than its target.
        """
        known = set(self.store.clusters)
        try:
            orphans = await self.backend.list_cluster_ids() - known
        except BackendError as e:
            self.log.error("Cannot list the backend's clusters, orphans stay: %s", e)
            orphans = set()
        for cluster_id in sorted(orphans):
            self.log.warning("Removing cluster %s: the backend has it, the database does not", cluster_id)
            try:
                await self.backend.remove_cluster_resources(cluster_id)
            except BackendError as e:
                self.log.error("Removing orphan cluster %s failed: %s", cluster_id, e)
        try:
            await self.poll_once()
        except BackendError as e:
            self.log.error("Cannot poll the backend at start, unlisted workers stay until the next poll: %s", e)
        for record in self.store.clusters.values():
            if record.status.active:
                self.enqueue(record.id)

    # -- specs ---------------------------------------------------------------------------------

    async def spec(self, record: ClusterRecord, *, with_tokens: bool = False) -> ClusterSpec:
        tls = {}
        if record.tls_cert:
            tls = {"cert": record.tls_cert, "key": self.secrets.decrypt(record.tls_key_encrypted)}
        tokens = {}
        if with_tokens and self.tokens_provider is not None:
            tokens = await self.tokens_provider(record.owner)
        return ClusterSpec(
            id=record.id,
            owner=record.owner,
            options=dict(record.options),
            env=self.env_hook(record),
            tls=tls,
            tokens=tokens,
            backend_state={**record.backend_state, "workers": {n: w.backend_state for n, w in record.workers.items()}},
            dashboard_prefix=self.dashboard_prefix_hook(record.id),
        )

    # -- state changes (all go through these) --------------------------------------------------

    async def request_stop(self, record: ClusterRecord, reason: str | None, *, failed: bool = False) -> None:
        """Set the cluster's target to stopped (or failed) with a reason; the loop does the rest.

        The status says ``stopping`` at once, so that nobody is handed a dashboard or a scheduler
        address of a cluster on its way out (the answer to DELETE, listings, the forwarder)."""
        if not record.status.active or record.target is not ClusterTarget.RUNNING:
            return
        record.target = ClusterTarget.FAILED if failed else ClusterTarget.STOPPED
        record.reason = reason
        record.status = ClusterStatus.STOPPING
        await self.store.save(record)
        self.log.info("Cluster %s of %s: stopping (%s)", record.id, record.owner, reason or "requested")
        self.enqueue(record.id)

    async def _set_status(self, record: ClusterRecord, status: ClusterStatus) -> None:
        self.log.info("Cluster %s of %s: %s -> %s", record.id, record.owner, record.status.value, status.value)
        record.status = status
        await self.store.save(record)

    # -- the reconcile step ----------------------------------------------------------------------

    async def _work_loop(self) -> None:
        while True:
            cluster_id = await self.queue.get()
            failed = False
            try:
                await self.reconcile(cluster_id)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failed = True
                record = self.store.get(cluster_id)
                attempts = self.queue.failures(cluster_id) + 1
                if isinstance(e, BackendError):
                    self.log.warning("Cluster %s: backend error (attempt %d): %s", cluster_id, attempts, e)
                else:
                    self.log.exception("Cluster %s: reconcile step failed (attempt %d)", cluster_id, attempts)
                if record is not None:
                    await self._after_error(record, e, attempts)
            finally:
                self.queue.done(cluster_id, failed=failed)

    async def _after_error(self, record: ClusterRecord, error: Exception, attempts: int) -> None:
        starting = record.status in (ClusterStatus.PENDING, ClusterStatus.STARTING)
        if record.target is ClusterTarget.RUNNING and starting:
            retryable = isinstance(error, BackendError) and error.retryable
            if not retryable or attempts >= self.start_attempts:
                message = str(error) if isinstance(error, (BackendError, CryptError)) else "internal error"
                await self.request_stop(record, f"the scheduler could not start: {message}", failed=True)

    async def reconcile(self, cluster_id: str) -> None:
        record = self.store.get(cluster_id)
        if record is None or not record.status.active:
            return
        if record.target is not ClusterTarget.RUNNING:
            await self._stop(record)
            return
        if record.status in (ClusterStatus.PENDING, ClusterStatus.STARTING):
            await self._start(record)
        if record.status is ClusterStatus.RUNNING and record.target is ClusterTarget.RUNNING:
            await self._reconcile_workers(record)

    async def _start(self, record: ClusterRecord) -> None:
        if record.status is ClusterStatus.STARTING:
            # a start was interrupted (error or service restart): clear its leftovers first
            await self.backend.stop_cluster(await self.spec(record))
        else:
            await self._set_status(record, ClusterStatus.STARTING)
        info = await self.backend.start_scheduler(await self.spec(record, with_tokens=True))
        if record.target is not ClusterTarget.RUNNING:
            record.backend_state = info.backend_state
            await self.store.save(record)
            self.enqueue(record.id)
            return
        now = time.time()
        record.scheduler_address = info.address
        record.dashboard_address = info.dashboard_address
        record.backend_state = info.backend_state
        record.started = now
        record.last_activity = now
        await self._set_status(record, ClusterStatus.RUNNING)

    async def _stop(self, record: ClusterRecord) -> None:
        if record.status is not ClusterStatus.STOPPING:
            await self._set_status(record, ClusterStatus.STOPPING)
        await self.backend.stop_cluster(await self.spec(record))
        for name in list(record.workers):
            await self.store.delete_worker(record.id, name)
        record.stopped = time.time()
        final = ClusterStatus.FAILED if record.target is ClusterTarget.FAILED else ClusterStatus.STOPPED
        await self._set_status(record, final)
        self.queue.forget(record.id)

    async def _reconcile_workers(self, record: ClusterRecord) -> None:
        stopping = {n: w for n, w in record.workers.items() if w.status is WorkerStatus.STOPPING}
        live = record.live_workers()
        missing = record.worker_target - len(live)
        if missing > 0:
            spec = await self.spec(record, with_tokens=True)
            submitted = await self.backend.submit_workers(spec, missing)
            now = time.time()
            for worker in submitted:
                await self.store.save_worker(WorkerRecord(record.id, worker.name, backend_state=worker.backend_state, created=now))
            self.log.info("Cluster %s: submitted %d workers", record.id, len(submitted))
        elif missing < 0:
            order = {WorkerStatus.HELD: 0, WorkerStatus.PENDING: 1, WorkerStatus.RUNNING: 2}
            victims = sorted(live, key=lambda w: (order[w.status], -w.created))[: -missing]
            for worker in victims:
                worker.status = WorkerStatus.STOPPING
                await self.store.save_worker(worker)
                stopping[worker.name] = worker
        if stopping:
            await self.backend.stop_workers(await self.spec(record), {n: w.backend_state for n, w in stopping.items()})
            for name in stopping:
                await self.store.delete_worker(record.id, name)
            self.log.info("Cluster %s: stopped %d workers", record.id, len(stopping))

    # -- observation ---------------------------------------------------------------------------

    async def poll_once(self) -> None:
        running = [c for c in self.store.clusters.values() if c.status is ClusterStatus.RUNNING]
        if not running:
            return
        specs = []
        for record in running:
            try:
                specs.append(await self.spec(record))
            except CryptError as e:
                await self.request_stop(record, str(e), failed=True)
        looked_at = time.time()
        observations = await self.backend.poll(specs)
        for spec in specs:
            record = self.store.get(spec.id)
            obs = observations.get(spec.id)
            if record is None or obs is None or record.status is not ClusterStatus.RUNNING:
                continue
            if self.queue.processing(record.id):
                continue  # its worker records are changing right now; the next poll will see them
            await self.apply_observation(record, obs, looked_at)
            await self._stop_strays(record, obs)

    async def apply_observation(self, record: ClusterRecord, obs, looked_at: float) -> None:
        """Fold one bulk-poll observation into the cluster's worker records.

        A worker recorded after ``looked_at`` (submitted while the poll ran) is not judged by its
        absence: the poll may have looked before it existed.
        """
        if not obs.scheduler_alive and record.target is ClusterTarget.RUNNING:
            await self.request_stop(
                record, f"the scheduler stopped unexpectedly: {obs.scheduler_reason or 'unknown reason'}", failed=True
            )
            return
        changed = False
        last_failure = None
        for name, worker in list(record.workers.items()):
            seen = obs.workers.get(name)
            if seen is None and worker.created >= looked_at:
                continue
            phase = seen.phase if seen is not None else WorkerPhase.EXITED
            if worker.status is WorkerStatus.STOPPING:
                continue
            if phase in (WorkerPhase.EXITED, WorkerPhase.FAILED):
                await self.store.delete_worker(record.id, name)
                changed = True
                if phase is WorkerPhase.FAILED:
                    record.workers_failed_total += 1
                    record.workers_failed_in_row += 1
                    last_failure = seen.reason if seen is not None else None
                    self.log.warning("Cluster %s: worker %s failed: %s", record.id, name, last_failure)
                continue
            status = {
                WorkerPhase.QUEUED: WorkerStatus.PENDING,
                WorkerPhase.HELD: WorkerStatus.HELD,
                WorkerPhase.RUNNING: WorkerStatus.RUNNING,
            }[phase]
            reason = seen.reason if seen is not None else None
            if status is not worker.status or reason != worker.reason:
                if status is WorkerStatus.RUNNING:
                    record.workers_failed_in_row = 0
                worker.status, worker.reason = status, reason
                await self.store.save_worker(worker)
                changed = True
        if last_failure is not None or changed:
            await self.store.save(record)
        if record.workers_failed_in_row >= self.worker_failure_limit:
            await self.request_stop(
                record,
                f"{record.workers_failed_in_row} worker failures in a row; last: {last_failure or 'unknown'}",
                failed=True,
            )
        elif changed or len(record.live_workers()) != record.worker_target:
            self.enqueue(record.id)

    async def _stop_strays(self, record: ClusterRecord, obs) -> None:
        """Stop workers the backend runs for this cluster that the service has no record of."""
        live = (WorkerPhase.QUEUED, WorkerPhase.HELD, WorkerPhase.RUNNING)
        strays = {n: {} for n, o in obs.workers.items() if n not in record.workers and o.phase in live}
        if strays and record.status is ClusterStatus.RUNNING and not self.queue.processing(record.id):
            self.log.warning("Cluster %s: stopping %d workers the service has no record of", record.id, len(strays))
            await self.backend.stop_workers(await self.spec(record), strays)

    async def check_activity(self) -> None:
        """Adaptivity, idle culling, maximum lifetime, and forgetting old stopped clusters."""
        now = time.time()
        to_probe = []
        for record in list(self.store.clusters.values()):
            if not record.status.active:
                if record.stopped and now - record.stopped > self.stopped_retention:
                    await self._forget(record)
                continue
            if record.status is not ClusterStatus.RUNNING or record.target is not ClusterTarget.RUNNING:
                continue
            if self.max_lifetime and record.started and now - record.started > self.max_lifetime:
                await self.request_stop(record, f"reached the maximum lifetime of {self.max_lifetime:g} s")
                continue
            if self.idle_timeout or record.adaptive:
                to_probe.append(record)
        limit = asyncio.Semaphore(self.probe_concurrency)

        async def probe(record: ClusterRecord) -> None:
            async with limit:
                await self._probe(record, now)

        await asyncio.gather(*(probe(r) for r in to_probe))

    async def _probe(self, record: ClusterRecord, now: float) -> None:
        try:
            key = self.secrets.decrypt(record.tls_key_encrypted)
            idle_since = await self.probe.idle_since(record.scheduler_address, record.tls_cert, key)
            wanted = await self.probe.adaptive_target(record.scheduler_address, record.tls_cert, key) if record.adaptive else None
        except (OSError, asyncio.TimeoutError, CryptError) as e:
            self.log.warning("Cluster %s: cannot ask the scheduler for its activity: %s", record.id, e)
            return
        if idle_since is None or record.last_activity is None:
            record.last_activity = now
            await self.store.save(record)
        elif idle_since > record.last_activity:
            # the scheduler worked since we last looked; it has been idle only since then
            record.last_activity = idle_since
            await self.store.save(record)
        elif self.idle_timeout and now - record.last_activity > self.idle_timeout:
            await self.request_stop(record, f"idle for more than {self.idle_timeout:g} s")
            return
        # the record may have changed while the scheduler answered: adaptivity turned off (the size
        # stays as it is), new bounds (they apply), or a stop asked for (the size no longer matters)
        if wanted is not None and record.adaptive and record.target is ClusterTarget.RUNNING:
            target = max(record.adapt_minimum or 0, min(record.adapt_maximum, wanted))
            if target != record.worker_target:
                self.log.info("Cluster %s: adaptive target %d -> %d", record.id, record.worker_target, target)
                record.worker_target = target
                await self.store.save(record)
                self.enqueue(record.id)

    async def refresh_tokens(self) -> None:
        """Push the owners' current tokens into running clusters whose tokens are about to expire."""
        now = time.time()
        for record in list(self.store.clusters.values()):
            if record.status is not ClusterStatus.RUNNING:
                self.token_keeper.forget(record.id)
            elif self.token_keeper.due(record.id, now):
                try:
                    key = self.secrets.decrypt(record.tls_key_encrypted)
                    await self.token_keeper.refresh(
                        record.id, record.owner, record.scheduler_address, client_security(record.tls_cert, key)
                    )
                except (OSError, asyncio.TimeoutError, CryptError, HubAPIError) as e:
                    self.log.warning("Cluster %s: cannot refresh its tokens: %s", record.id, e)

    async def _forget(self, record: ClusterRecord) -> None:
        try:
            await self.backend.remove_cluster_resources(record.id)
        except BackendError as e:
            self.log.warning("Cluster %s: removing its leftovers failed: %s", record.id, e)
            return
        await self.store.delete_cluster(record.id)
        self.log.info("Forgot cluster %s of %s (stopped %.0f s ago)", record.id, record.owner, time.time() - record.stopped)

    async def _periodic(self, interval: float, fn: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("Periodic %s failed", fn.__name__)
