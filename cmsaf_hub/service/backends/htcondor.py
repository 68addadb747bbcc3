"""HTCondor backend: Dask workers (and optionally the scheduler) as HTCondor jobs, as their owner.

Every schedd call goes through :class:`~cmsaf_hub.service.backends.condor_seam.IdentityProcesses`: the
owner's exchanged ``condor`` token authenticates the call inside a process that only ever held that
owner's token. Submit descriptions come from the pure builders in
:mod:`~cmsaf_hub.service.backends.condor_jobs`; queue and history ads become observations in
:mod:`~cmsaf_hub.service.backends.condor_status`. This module holds only configuration and I/O order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from traitlets import Any as AnyTrait
from traitlets import Bool, Dict, Enum, Float, Int, List, Unicode, default
from traitlets import Callable as CallableTrait

from ...comm import CREDENTIAL_ENV
from . import condor_scheduler_preload
from .base import Backend, BackendError, ClusterObservation, ClusterSpec, SchedulerInfo, SubmittedWorker
from .condor_jobs import (
    ATTR_CLUSTER,
    ATTR_DASHBOARD_ADDRESS,
    ATTR_OWNER,
    ATTR_ROLE,
    ATTR_SCHEDULER_ADDRESS,
    ATTR_SCHEDULER_WS_ADDRESS,
    DEFAULT_JOB_ENV_ALLOWLIST,
    POLL_PROJECTION,
    SCHEDULER_PRELOAD_FILE,
    ROLE_INPUTS,
    ROLE_WORKER,
    JobShape,
    any_cluster_constraint,
    bearer_token_name,
    check_name,
    classad_string,
    cluster_constraint,
    find_secret,
    inputs_description,
    job_environment,
    sandbox_files,
    scheduler_description,
    worker_description,
)
from .condor_retire import retire_workers
from .condor_shape import CondorJobShapeConfig
from .condor_seam import SERVICE_IDENTITY, CondorSeam, IdentityProcesses, SeamError, seam_error
from .condor_status import (
    REMOVED_BY_US,
    act_shortfall,
    history_constraint,
    least_loaded_schedd,
    missing_jobs,
    observe,
    phase_of_queued,
    unused_inputs_jobs,
)

#: The scheduler job's preload, shipped into its sandbox as a file (read once, at import).
PRELOAD_SOURCE = Path(condor_scheduler_preload.__file__).read_text()


SCHEDD_LOAD_PROJECTION = ["Name", "TotalRunningJobs", "TotalIdleJobs", "TotalHeldJobs"]


class HTCondorBackend(CondorJobShapeConfig, Backend):
    """Runs each cluster's workers as HTCondor jobs submitted, queried and removed as the owner."""

    scheduler_placement = Enum(
        ["service", "htcondor"], default_value="service",
        help="""Where each cluster's scheduler runs: "service" (a local process beside the service,
        started like the local backend does) or "htcondor" (a job of its own, optionally pinned to
        the workers' site; it publishes its address into its job ad through Chirp).""",
    ).tag(config=True)

    schedd_name = Unicode(
        "", help="""Name of the schedd to submit to. Empty: choose the least loaded schedd known to
        the collector when a cluster starts (the choice is kept in the cluster's backend_state).""",
    ).tag(config=True)

    condor_config = Dict(
        Unicode(), default_value={"SEC_CLIENT_AUTHENTICATION_METHODS": "SCITOKENS"},
        help="""HTCondor client settings of the per-user client processes, e.g. COLLECTOR_HOST,
        AUTH_SSL_CLIENT_CAFILE (the CA of the schedd's host certificate). Each key K is set as
        _condor_K; SCITOKENS_FILE is always the identity's own token file.""",
    ).tag(config=True)

    token_name = Unicode(
        "condor", help="The exchanged token that authenticates the owner to the schedd (SciTokens).",
    ).tag(config=True)

    bearer_token_names = List(
        Unicode(), default_value=["xrootd", "condor"],
        help="BEARER_TOKEN_FILE in jobs points at the first of these tokens the cluster has.",
    ).tag(config=True)

    service_token_file = Unicode(
        "", help="""A token file of a read-only service identity. When set, one queue query per
        schedd covers all clusters in a poll, and restart reconciliation can list every user's jobs.
        When empty, polls run one query per owner (as that owner).""",
    ).tag(config=True)

    state_dir = Unicode(
        "", help="Directory (0700) for the per-user client processes' token files. Empty: a temp dir.",
    ).tag(config=True)

    max_client_processes = Int(
        32, help="Per-user HTCondor client processes kept alive; the least recently used is stopped.",
    ).tag(config=True)

    seam_factory = AnyTrait(
        CondorSeam, help="Picklable callable building the bindings seam inside each client process.",
    ).tag(config=True)

    pin_scheduler_to_site = Bool(
        True, help="With placement htcondor, run the scheduler job at the workers' site too.",
    ).tag(config=True)


    held_timeout = Int(
        900, help="Seconds a job may stay held before the backend removes it (reason recorded); 0: never.",
    ).tag(config=True)

    scheduler_idle_timeout = Int(
        3600, help="Seconds without clients after which a scheduler job exits (placement htcondor).",
    ).tag(config=True)

    scheduler_queue_timeout = Float(
        3600, help="Seconds a scheduler job may wait in the queue (idle) before the start fails.",
    ).tag(config=True)

    scheduler_start_timeout = Float(
        120, help="Seconds a running scheduler job has to publish its address before the start fails.",
    ).tag(config=True)

    retire_timeout = Float(30, help="Seconds to wait for the scheduler to retire workers gracefully.").tag(config=True)

    status_interval = Float(2.0, help="Seconds between queue checks while a scheduler job starts.").tag(config=True)

    job_env_allowlist = List(
        Unicode(), default_value=list(DEFAULT_JOB_ENV_ALLOWLIST),
        help="""Names (``NAME`` or a ``PREFIX*``) of the cluster environment's variables that jobs get;
        every other variable stays out of the job ads (readable by all pool users) and is logged by
        name. Names that say they hold a secret (token, secret, password, credential, key) never
        pass. Jobs never inherit the service's own environment.""",
    ).tag(config=True)

    inputs_grace = Float(
        600, help="""Seconds an inputs job (the spooled input files of a batch of workers) is kept
        after its last worker left the queue, before it is removed.""",
    ).tag(config=True)

    scheduler_backend = AnyTrait(
        None, allow_none=True, help="Backend starting schedulers for placement service (default: LocalBackend).",
    )

    tokens_provider = CallableTrait(
        None, allow_none=True,
        help="""``async (owner) -> {name: jwt}``: the owner's current tokens (set by the service).
        Used to act as the owner on a cluster no call brought a token for (after a restart, orphans).""",
    )

    @default("scheduler_backend")
    def _default_scheduler_backend(self):
        if self.scheduler_placement != "service":
            return None
        from .local import LocalBackend  # the local backend's scheduler start, reused as is

        return LocalBackend(parent=self)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        import tempfile

        state_dir = self.state_dir or tempfile.mkdtemp(prefix="cmsaf-condor-")
        self.processes = IdentityProcesses(
            state_dir=state_dir,
            condor_env={f"_condor_{k}": v for k, v in self.condor_config.items()},
            seam_factory=self.seam_factory,
            max_processes=self.max_client_processes,
            service_token_file=self.service_token_file or None,
        )
        self._owners: dict[str, tuple[str, str | None]] = {}  # orphan cluster id -> (owner, schedd)
        self._tokens: dict[str, str] = {}  # owner -> last condor token seen (never logged)
        #: cluster id -> (digest of the files, inputs job, its spool directory) of its latest batch
        self._inputs: dict[str, tuple[str, str, str]] = {}
        #: orphan clusters whose removal did not (fully) happen: retried on every poll
        self._pending_orphans: set[str] = set()
        if self.scheduler_backend is not None:
            await self.scheduler_backend.start()

    async def close(self) -> None:
        await self.processes.close()
        if self.scheduler_backend is not None:
            await self.scheduler_backend.close()

    def _token(self, cluster: ClusterSpec) -> str:
        """The owner's condor token: the spec's, else the last one seen (stop and poll specs carry none)."""
        token = cluster.tokens.get(self.token_name) or self._tokens.get(cluster.owner)
        if not token:
            raise BackendError(f"no {self.token_name!r} token for {cluster.owner} yet: cannot authenticate to HTCondor",
                               retryable=True)
        self._tokens[cluster.owner] = token
        return token

    async def _owner_token(self, owner: str, spec_tokens: dict[str, str] | None = None) -> str | None:
        """The owner's condor token from the call, the last one seen, or the service's tokens provider."""
        token = (spec_tokens or {}).get(self.token_name) or self._tokens.get(owner)
        if token is None and self.tokens_provider is not None:
            try:
                token = (await self.tokens_provider(owner) or {}).get(self.token_name)
            except Exception as e:  # a user who never logged in again: fall back, say so
                self.log.warning("No %s token for %s from the service: %s", self.token_name, owner, type(e).__name__)
        if token:
            self._tokens[owner] = token
        return token

    async def _as_owner(self, cluster: ClusterSpec, action: str, method: str, *args: Any) -> Any:
        try:
            return await self.processes.call(cluster.owner, self._token(cluster), method, *args)
        except SeamError as e:
            raise seam_error(action, e) from None

    def _job_env(self, cluster: ClusterSpec) -> dict[str, str]:
        kept, dropped = job_environment(cluster.env, self.job_env_allowlist)
        if dropped:
            self.log.debug("Cluster %s: not in job environments (job_env_allowlist): %s", cluster.id, ", ".join(dropped))
        return kept

    @staticmethod
    def _worker_credential(cluster: ClusterSpec) -> str | None:
        """The cluster's worker credential: the service puts it in the cluster environment, which
        jobs never get (``job_environment`` drops it), so it reaches them as a sandbox file only."""
        return cluster.env.get(CREDENTIAL_ENV) or None

    def _files(self, cluster: ClusterSpec, descriptions: list[dict[str, str]],
               extra_files: dict[str, str] | None = None) -> dict[str, str]:
        """The sandbox files the descriptions transfer (an outbound-only worker's batch gets no TLS
        key); refuses descriptions that carry any of the cluster's secrets as a value."""
        available = {**sandbox_files(cluster.tokens, cluster.tls, worker_credential=self._worker_credential(cluster)),
                     **(extra_files or {})}
        for description in descriptions:
            leak = find_secret(description, list(available.values()))
            if leak is not None:  # a guard, not a feature: builders never put secrets in descriptions
                raise BackendError(f"refusing to submit: submit command {leak!r} would carry a secret")
        listed = {name for d in descriptions for name in d.get("transfer_input_files", "").split(",") if name}
        return {name: content for name, content in available.items() if name in listed}

    async def _submit(self, cluster: ClusterSpec, description: dict[str, str], count: int, schedd: str | None,
                      extra_files: dict[str, str] | None = None) -> list[str]:
        files = self._files(cluster, [description], extra_files)
        return await self._as_owner(cluster, "submitting jobs", "submit", schedd, description, count, files)

    async def _choose_schedd(self, cluster: ClusterSpec) -> str | None:
        if self.schedd_name:
            return self.schedd_name
        ads = await self._as_owner(cluster, "locating schedds", "schedds", SCHEDD_LOAD_PROJECTION)
        return least_loaded_schedd(ads)

    # --- scheduler -------------------------------------------------------------------------

    async def start_scheduler(self, cluster: ClusterSpec) -> SchedulerInfo:
        check_name("cluster id", cluster.id)
        shape = self.job_shape(cluster)  # validates image/site before anything starts
        schedd = await self._choose_schedd(cluster)
        if self.scheduler_placement == "service":
            info = await self.scheduler_backend.start_scheduler(cluster)
            state = {**info.backend_state, "placement": "service", "schedd": schedd, "scheduler_address": info.address}
            return SchedulerInfo(info.address, info.dashboard_address, state)
        if not self.pin_scheduler_to_site:
            shape = JobShape(**{**shape.__dict__, "site": None})
        desc = scheduler_description(
            JobShape(**{**shape.__dict__, "cores": 1}),
            cluster_id=cluster.id, owner=cluster.owner, token_names=sorted(cluster.tokens),
            bearer=bearer_token_name(cluster.tokens, self.bearer_token_names), tls=bool(cluster.tls),
            idle_timeout=self.scheduler_idle_timeout, env=self._job_env(cluster), dashboard_prefix=cluster.dashboard_prefix,
            worker_credential=self._worker_credential(cluster) is not None,
        )
        [job] = await self._submit(cluster, desc, 1, schedd, {SCHEDULER_PRELOAD_FILE: PRELOAD_SOURCE})
        self.log.info("Cluster %s: scheduler job %s submitted as %s", cluster.id, job, cluster.owner)
        try:
            ad = await self._wait_for_scheduler(cluster, schedd, job)
        except BaseException:
            await self._remove(cluster, schedd, [job], "scheduler start failed")
            raise
        address = ad[ATTR_SCHEDULER_ADDRESS]
        state = {"placement": "htcondor", "schedd": schedd, "scheduler_job": job, "scheduler_address": address,
                 "address": address, "ws_address": ad.get(ATTR_SCHEDULER_WS_ADDRESS)}
        return SchedulerInfo(address, ad.get(ATTR_DASHBOARD_ADDRESS) or "", state)

    async def _wait_for_scheduler(self, cluster: ClusterSpec, schedd: str | None, job: str) -> dict[str, Any]:
        """Wait for the job's published address; time in the queue is counted separately."""
        loop = asyncio.get_running_loop()
        queued_since, running_since = loop.time(), None
        constraint = f"ClusterId == {int(job.split('.')[0])}"
        while True:
            ads = await self._as_owner(cluster, "waiting for the scheduler", "query", schedd, constraint, POLL_PROJECTION)
            if not ads:
                hist = await self._as_owner(cluster, "reading history", "history", schedd, constraint, POLL_PROJECTION, 1)
                reason = (hist[0].get("RemoveReason") or f"status {hist[0].get('JobStatus')}") if hist else "unknown"
                raise BackendError(f"scheduler job {job} left the queue: {reason}")
            ad = ads[0]
            if ad.get(ATTR_SCHEDULER_ADDRESS):
                return ad
            phase, reason = phase_of_queued(ad)
            now = loop.time()
            if phase.value in ("held", "failed", "exited"):
                raise BackendError(f"scheduler job {job} is {phase.value}: {reason}")
            if phase.value == "running":
                running_since = running_since or now
                if now - running_since > self.scheduler_start_timeout:
                    raise BackendError(f"scheduler job {job} did not publish its address in {self.scheduler_start_timeout:.0f} s")
            elif now - queued_since > self.scheduler_queue_timeout:
                raise BackendError(f"scheduler job {job} waited in the queue longer than {self.scheduler_queue_timeout:.0f} s")
            await asyncio.sleep(self.status_interval)

    # --- workers ---------------------------------------------------------------------------

    async def submit_workers(self, cluster: ClusterSpec, count: int) -> list[SubmittedWorker]:
        if count <= 0:
            return []
        state = cluster.backend_state
        desc = worker_description(
            self.job_shape(cluster), cluster_id=cluster.id, owner=cluster.owner,
            scheduler_address=state["scheduler_address"], token_names=sorted(cluster.tokens),
            bearer=bearer_token_name(cluster.tokens, self.bearer_token_names), tls=bool(cluster.tls),
            env=self._job_env(cluster), worker_credential=self._worker_credential(cluster) is not None,
        )
        inputs = inputs_description(desc)
        files = self._files(cluster, [desc, inputs])
        digest = hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()
        cached = self._inputs.get(cluster.id)
        reuse = cached[1:] if cached is not None and cached[0] == digest else None
        result = await self._as_owner(cluster, "submitting jobs", "submit_sharing_inputs", state.get("schedd"),
                                      inputs, desc, count, files, reuse)
        self._inputs[cluster.id] = (digest, result["inputs"], result["iwd"])
        jobs = result["jobs"]
        self.log.info("Cluster %s: %d worker jobs submitted as %s in one call (input files %s in job %s)",
                      cluster.id, len(jobs), cluster.owner, "already spooled" if reuse else "spooled once",
                      result["inputs"])
        return [SubmittedWorker(name=job, backend_state={"job": job}) for job in jobs]

    async def _as_owner_or_service(self, cluster: ClusterSpec, action: str, method: str, *args: Any) -> Any:
        """As the owner (token from the call, the last seen, or the service's tokens provider); as the
        service identity when no owner token is known or it is refused (expired): stopping must not
        depend on a fresh user token. The schedd lets an owner remove their own jobs; the service
        identity can remove other users' jobs only where the pool makes it a queue super user."""
        token = await self._owner_token(cluster.owner, cluster.tokens)
        if token is not None or not self.service_token_file:
            if token is None:
                raise BackendError(f"no {self.token_name!r} token for {cluster.owner}: cannot act as them",
                                   retryable=True)
            try:
                return await self.processes.call(cluster.owner, token, method, *args)
            except SeamError as e:
                if e.kind != "auth" or not self.service_token_file:
                    raise seam_error(action, e) from None
                self.log.warning("HTCondor refused %s's token while %s; retrying as the service identity",
                                 cluster.owner, action)
        try:
            return await self.processes.call(SERVICE_IDENTITY, None, method, *args)
        except SeamError as e:
            raise seam_error(action, e) from None

    async def _remove(self, cluster: ClusterSpec, schedd: str | None, job_ids: list[str], reason: str) -> None:
        """Remove ``job_ids``; what the schedd did not remove is an error (retryable) and logged."""
        result = await self._as_owner_or_service(cluster, "removing jobs", "act", schedd, "Remove", job_ids,
                                                 REMOVED_BY_US + reason)
        shortfall = act_shortfall(result, job_ids)
        if shortfall:
            self.log.warning("Cluster %s of %s: %s (%s): %s", cluster.id, cluster.owner, shortfall, reason,
                             ", ".join(job_ids))
            raise BackendError(f"{shortfall} while removing jobs ({reason})", retryable=True)

    async def stop_workers(self, cluster: ClusterSpec, workers: dict[str, dict[str, Any]]) -> None:
        if not workers:
            return
        names = sorted(workers)
        retired = await retire_workers(
            cluster.backend_state.get("scheduler_address"), cluster.tls, names, timeout=self.retire_timeout
        )
        self.log.info("Cluster %s: %d of %d workers retired through the scheduler", cluster.id, retired, len(names))
        jobs = [state.get("job", name) for name, state in workers.items()]
        await self._remove(cluster, cluster.backend_state.get("schedd"), sorted(jobs), "scaled down")

    # --- status ----------------------------------------------------------------------------

    async def poll(self, clusters: list[ClusterSpec]) -> dict[str, ClusterObservation]:
        by_schedd: dict[str | None, list[ClusterSpec]] = defaultdict(list)
        for cluster in clusters:
            by_schedd[cluster.backend_state.get("schedd")].append(cluster)
        results: dict[str, ClusterObservation] = {}
        for cluster_id in sorted(self._pending_orphans):  # removals that did not happen yet
            try:
                await self.remove_cluster_resources(cluster_id)
            except BackendError as e:
                self.log.warning("Orphan cluster %s: its removal is retried on the next poll: %s", cluster_id, e)
        for schedd, group in by_schedd.items():
            results.update(await self._poll_schedd(schedd, group))
        if self.scheduler_placement == "service":
            await self._poll_local_schedulers(clusters, results)
        return results

    async def _poll_schedd(self, schedd: str | None, clusters: list[ClusterSpec]) -> dict[str, ClusterObservation]:
        known = {c.id: dict(c.backend_state.get("workers") or {}) for c in clusters}
        ads: list[dict[str, Any]] = []
        if self.service_token_file:
            constraint = cluster_constraint(known)
            try:
                ads = await self.processes.call(SERVICE_IDENTITY, None, "query", schedd, constraint, POLL_PROJECTION)
            except SeamError as e:
                raise seam_error("polling the queue", e) from None
        else:
            by_owner: dict[str, list[ClusterSpec]] = defaultdict(list)
            for c in clusters:
                by_owner[c.owner].append(c)
            for owner, owned in by_owner.items():
                constraint = cluster_constraint(c.id for c in owned)
                try:
                    ads += await self._as_owner(owned[0], "polling the queue", "query", schedd, constraint, POLL_PROJECTION)
                except BackendError as e:  # one owner's failure must not hide everyone else's clusters
                    self.log.warning("Not observing %d clusters of %s this time: %s", len(owned), owner, e)
                    for c in owned:
                        known.pop(c.id)
            clusters = [c for c in clusters if c.id in known]
            if not known:
                return {}
        missing = missing_jobs(known, ads)
        history: list[dict[str, Any]] = []
        if missing:
            args = (schedd, history_constraint(missing), POLL_PROJECTION, len(missing))
            if self.service_token_file:
                try:
                    history = await self.processes.call(SERVICE_IDENTITY, None, "history", *args)
                except SeamError as e:
                    raise seam_error("reading history", e) from None
            else:
                holder = next(c for c in clusters if any(m in known[c.id] for m in missing))
                history = await self._as_owner(holder, "reading history", "history", *args)
        result = observe(known, ads, history, now=time.time(), held_limit=self.held_timeout,
                         scheduler_in_queue=self.scheduler_placement == "htcondor")
        specs = {c.id: c for c in clusters}
        for cid, obs in result.clusters.items():
            doomed = sorted(name for name in obs.workers if name in result.remove_held)
            if doomed:
                self.log.warning("Cluster %s: removing %d jobs held longer than %d s", cid, len(doomed), self.held_timeout)
                await self._remove(specs[cid], schedd, doomed, f"held longer than {self.held_timeout} s")
        await self._remove_unused_inputs(specs, schedd, ads)
        return result.clusters

    async def _remove_unused_inputs(self, specs: dict[str, ClusterSpec], schedd: str | None,
                                    ads: list[dict[str, Any]]) -> None:
        """Inputs jobs of earlier batches whose workers have all left the queue go (the latest stays)."""
        by_cluster: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for ad in ads:
            by_cluster[ad.get(ATTR_CLUSTER)].append(ad)
        now = time.time()
        for cid, spec in specs.items():
            latest = [self._inputs[cid][1]] if cid in self._inputs else []
            unused = unused_inputs_jobs(by_cluster.get(cid, []), latest, now=now, grace=self.inputs_grace)
            if unused:
                try:
                    await self._remove(spec, schedd, unused, "input files no longer used")
                except BackendError as e:
                    self.log.warning("Cluster %s: unused inputs jobs stay until the next poll: %s", cid, e)

    async def _poll_local_schedulers(self, clusters: list[ClusterSpec], results: dict[str, ClusterObservation]) -> None:
        local = [dataclasses.replace(c, backend_state={**c.backend_state, "workers": {}}) for c in clusters]
        observed = await self.scheduler_backend.poll(local)
        for cid, obs in observed.items():
            if cid in results:
                results[cid].scheduler_alive = obs.scheduler_alive
                results[cid].scheduler_reason = obs.scheduler_reason

    # --- teardown, logs, restart ---------------------------------------------------------

    async def stop_cluster(self, cluster: ClusterSpec) -> None:
        """Remove every job of the cluster (found by its attribute), then its local scheduler.

        A cluster whose start failed before a schedd was chosen is looked for on the configured
        schedd (or every schedd the collector knows), never on a local one."""
        constraint = cluster_constraint([cluster.id])
        known = cluster.backend_state.get("schedd")
        for schedd in [known] if known else await self._listing_schedds(cluster):
            ads = await self._as_owner_or_service(cluster, "reading the queue", "query", schedd, constraint,
                                                  ["ClusterId", "ProcId", "JobStatus"])
            live = sorted(f"{ad['ClusterId']}.{ad['ProcId']}" for ad in ads if ad.get("JobStatus") != 3)
            if live:
                await self._remove(cluster, schedd, live, "cluster stopped")
        self._inputs.pop(cluster.id, None)
        if self.scheduler_backend is not None:
            await self.scheduler_backend.stop_cluster(cluster)

    async def logs(self, cluster: ClusterSpec) -> dict[str, str]:
        ads = await self._as_owner(cluster, "reading the queue", "query", cluster.backend_state.get("schedd"),
                                   cluster_constraint([cluster.id]), POLL_PROJECTION + ["RemoteHost"])
        logs = {}
        if cluster.backend_state.get("placement") == "service":
            logs.update(await self.scheduler_backend.logs(cluster))
        for ad in ads:
            if ad.get(ATTR_ROLE) == ROLE_INPUTS:  # holds input files, never runs: nothing to say
                continue
            name = f"{ad['ClusterId']}.{ad['ProcId']}"
            phase, reason = phase_of_queued(ad)
            line = f"HTCondor job {name}: {phase.value}" + (f" on {ad['RemoteHost']}" if ad.get("RemoteHost") else "")
            key = name if ad.get("CmsafRole") == ROLE_WORKER else "scheduler"
            logs[key] = (logs.get(key, "") + "\n" + line + (f" ({reason})" if reason else "")).strip()
        return logs

    async def _listing_schedds(self, cluster: ClusterSpec | None = None) -> list[str | None]:
        """The configured schedd, else every schedd the collector knows (asked as ``cluster``'s owner
        when given, else as the service identity)."""
        if self.schedd_name:
            return [self.schedd_name]
        if cluster is not None:
            ads = await self._as_owner_or_service(cluster, "locating schedds", "schedds", ["Name"])
        else:
            try:
                ads = await self.processes.call(SERVICE_IDENTITY, None, "schedds", ["Name"])
            except SeamError as e:
                raise seam_error("locating schedds", e) from None
        names = [ad["Name"] for ad in ads if ad.get("Name")]
        if not names:
            raise BackendError("the collector knows no schedd", retryable=True)
        return names

    async def list_cluster_ids(self) -> set[str]:
        """Clusters with jobs in any schedd (needs ``service_token_file``) or a local scheduler."""
        local = await self.scheduler_backend.list_cluster_ids() if self.scheduler_backend is not None else set()
        if not self.service_token_file:
            self.log.warning("No service_token_file: cannot list other users' jobs; orphans exit via death timeout")
            return local
        listed: set[str] = set()
        for schedd in await self._listing_schedds():
            try:
                ads = await self.processes.call(SERVICE_IDENTITY, None, "query", schedd,
                                                f"({any_cluster_constraint()}) && JobStatus != 3",
                                                [ATTR_CLUSTER, ATTR_OWNER])
            except SeamError as e:
                raise seam_error("listing clusters", e) from None
            for ad in ads:
                self._owners[ad[ATTR_CLUSTER]] = (ad.get(ATTR_OWNER), schedd)
                listed.add(ad[ATTR_CLUSTER])
        return listed | local

    async def remove_cluster_resources(self, cluster_id: str) -> None:
        """Remove an orphan's jobs and its local scheduler.

        As its owner (the last token seen, else the service's tokens provider): the schedd lets
        owners remove their own jobs, no super user needed. Else as the service identity, which
        works only where the pool made it a queue super user. What did not happen is logged,
        raised, and retried on every poll; without any identity its workers exit on their own
        through ``--death-timeout``."""
        if self.scheduler_backend is not None:
            await self.scheduler_backend.remove_cluster_resources(cluster_id)
        owner, schedd = self._owners.get(cluster_id, (None, self.schedd_name or None))
        token = await self._owner_token(owner) if owner else None
        if token is not None:
            identity = owner
        elif self.service_token_file:
            identity = SERVICE_IDENTITY
        else:
            self.log.warning("Orphan cluster %s of %s: no identity can remove its jobs", cluster_id, owner)
            return
        constraint = f"{ATTR_CLUSTER} == {classad_string(check_name('cluster id', cluster_id))} && JobStatus != 3"
        try:
            ads = await self.processes.call(identity, token, "query", schedd, constraint, ["ClusterId", "ProcId"])
            jobs = sorted(f"{ad['ClusterId']}.{ad['ProcId']}" for ad in ads)
            result = await self.processes.call(identity, token, "act", schedd, "Remove", jobs,
                                               REMOVED_BY_US + "orphaned cluster") if jobs else {}
        except SeamError as e:
            self._pending_orphans.add(cluster_id)
            raise seam_error(f"removing the jobs of orphaned cluster {cluster_id}", e) from None
        shortfall = act_shortfall(result, jobs)
        if shortfall:
            self._pending_orphans.add(cluster_id)
            self.log.warning("Orphan cluster %s of %s: %s as %s; retried on the next poll", cluster_id, owner,
                             shortfall, identity)
            raise BackendError(f"{shortfall} of orphaned cluster {cluster_id}", retryable=True)
        if jobs:
            self.log.info("Orphan cluster %s of %s: %d jobs removed as %s", cluster_id, owner, len(jobs), identity)
        self._pending_orphans.discard(cluster_id)
        self._owners.pop(cluster_id, None)
