"""HTCondorBackend on a real personal HTCondor pool with SciTokens from the dev IAM.

Skipped (with the reason) where ``condor_master`` is not on PATH; see conftest.py. Every cluster a
test creates is stopped at teardown, as its owner.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import cloudpickle
import jwt
import pytest
from distributed import Client

from cmsaf_hub.service.backends.base import BackendError, ClusterSpec, SubmittedWorker, WorkerPhase
from cmsaf_hub.service.backends.condor_jobs import JobShape, sandbox_files, worker_description
from cmsaf_hub.service.backends.condor_retire import cluster_security
from cmsaf_hub.service.backends.condor_seam import SERVICE_IDENTITY, CondorSeam
from cmsaf_hub.service.backends.htcondor import HTCondorBackend
from cmsaf_hub.service.backends.local import LocalBackend
from cmsaf_hub.service.crypto import generate_cluster_tls
from cmsaf_hub.service.token_push import push_tokens

pytestmark = [pytest.mark.htcondor, pytest.mark.slow]

PHASE_TIMEOUT = 180


class Harness:
    """Makes backends and clusters on the pool; remembers them for teardown."""

    def __init__(self, pool, tmp_path):
        self.pool = pool
        self.tmp = tmp_path
        self.backends: list[HTCondorBackend] = []
        self.clusters: list[ClusterSpec] = []

    async def backend(self, **traits) -> HTCondorBackend:
        await self.pool.refresh_service_token()
        settings = dict(
            schedd_name=self.pool.schedd_name, condor_config=self.pool.condor_config,
            service_token_file=str(self.pool.service_token_file), state_dir=str(self.tmp / f"client-{len(self.backends)}"),
            python=sys.executable, sites=["T2_TEST"], status_interval=1.0,
        )
        settings.update(traits)
        backend = HTCondorBackend(**settings)
        if backend.scheduler_placement == "service":
            # as the owners' OS users (the pool created them), in a directory they can traverse
            backend.scheduler_backend = LocalBackend(state_dir=str(self.pool.local_dir.parent / "schedulers"),
                                                     python=sys.executable)
        await backend.start()
        self.backends.append(backend)
        return backend

    async def cluster(self, owner: str, cid: str, **options) -> ClusterSpec:
        token_dir = self.tmp / f"{cid}-scheduler-tokens"
        token_dir.mkdir(mode=0o700)
        spec = ClusterSpec(id=cid, owner=owner, options={"cores": 1, "memory": 0.5, **options},
                           env={"CMSAF_TOKEN_DIR": str(token_dir)},
                           tls=generate_cluster_tls(cid).as_dict(), tokens={"condor": await self.pool.token(owner)})
        self.clusters.append(spec)
        return spec

    async def fresh(self, spec: ClusterSpec) -> ClusterSpec:
        spec.tokens = {"condor": await self.pool.token(spec.owner)}
        return spec

    async def close(self) -> None:
        if self.backends:
            backend = self.backends[-1]
            for spec in self.clusters:
                await backend.stop_cluster(await self.fresh(spec))
        for backend in self.backends:
            await backend.close()


@pytest.fixture
async def harness(condor_pool, tmp_path):
    h = Harness(condor_pool, tmp_path)

    async def keep_service_token_fresh():  # the service's read identity, like a deployment's cron
        while True:
            await asyncio.sleep(condor_pool.iam.lifetimes["access_token"] / 3)
            await condor_pool.refresh_service_token()

    refresher = asyncio.create_task(keep_service_token_fresh())
    yield h
    refresher.cancel()
    await condor_pool.refresh_service_token()
    await h.close()


def track(spec: ClusterSpec, workers) -> None:
    spec.backend_state.setdefault("workers", {}).update({w.name: w.backend_state for w in workers})


async def wait_phase(backend, spec, phase: WorkerPhase, names=None, timeout=PHASE_TIMEOUT, tolerate=()):
    """Poll until the named workers (default: all tracked) are in ``phase``; return the observation.

    ``tolerate``: backend error texts expected while polling (e.g. a restarting schedd)."""
    deadline = time.monotonic() + timeout
    obs = None
    while True:
        try:
            obs = (await backend.poll([spec]))[spec.id]
        except BackendError as e:
            if not any(t in str(e) for t in tolerate):
                raise
        wanted = names or list(spec.backend_state.get("workers", {}))
        if obs is not None and all(n in obs.workers and obs.workers[n].phase is phase for n in wanted):
            return obs
        if time.monotonic() > deadline:
            raise AssertionError(f"workers {wanted} not {phase.value}: {obs.workers if obs else None}")
        await asyncio.sleep(1)


async def wait_queue(backend, constraint, projection, done, timeout=PHASE_TIMEOUT):
    """Query the queue until ``done(ads)``; return the ads."""
    deadline = time.monotonic() + timeout
    while not done(ads := await queue(backend, constraint, projection)):
        if time.monotonic() > deadline:
            raise AssertionError(f"queue for {constraint!r} never as expected: {ads}")
        await asyncio.sleep(0.5)
    return ads


def by_value(fn):
    """Ship ``fn`` to Dask processes by value: schedulers and job workers cannot import this module."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return fn


@by_value
def worker_names(dask_scheduler) -> list[str]:
    return sorted(str(ws.name) for ws in dask_scheduler.workers.values())


async def start(backend, spec):
    info = await backend.start_scheduler(spec)
    spec.backend_state = dict(info.backend_state)
    return info


async def queue(backend, constraint, projection):
    """The queue as the service's read identity sees it, without the ``ServerTime`` the schedd adds."""
    ads = await backend.processes.call(SERVICE_IDENTITY, None, "query", backend.schedd_name, constraint, projection)
    return [{k: v for k, v in ad.items() if k != "ServerTime"} for ad in ads]


async def test_create_compute_scale_up_and_down_retires_the_exact_workers(harness):
    backend = await harness.backend()
    spec = await harness.cluster("alice", "it-scale")
    info = await start(backend, spec)
    first = await backend.submit_workers(spec, 2)
    track(spec, first)
    await wait_phase(backend, spec, WorkerPhase.RUNNING)
    async with Client(info.address, security=cluster_security(spec.tls), asynchronous=True) as client:
        await client.wait_for_workers(2)
        assert await client.submit(sum, [1, 2, 3]) == 6
        assert await client.run_on_scheduler(worker_names) == sorted(w.name for w in first)

        more = await backend.submit_workers(await harness.fresh(spec), 2)
        track(spec, more)
        await client.wait_for_workers(4)
        retire = {first[0].name: first[0].backend_state, more[1].name: more[1].backend_state}
        await backend.stop_workers(await harness.fresh(spec), retire)
        assert await client.run_on_scheduler(worker_names) == sorted([first[1].name, more[0].name])
    obs = await wait_phase(backend, spec, WorkerPhase.EXITED, names=list(retire))
    assert obs.workers[first[1].name].phase is WorkerPhase.RUNNING


async def test_held_job_is_surfaced_then_removed_with_its_reason(harness):
    backend = await harness.backend(held_timeout=0)
    spec = await harness.cluster("alice", "it-held")
    spec.backend_state = {"schedd": backend.schedd_name, "scheduler_address": "tls://127.0.0.1:9"}
    [worker] = await backend.submit_workers(spec, 1)
    track(spec, [worker])
    await backend.processes.call("alice", spec.tokens["condor"], "act", backend.schedd_name, "Hold", [worker.name],
                                 "integration test hold")
    obs = await wait_phase(backend, spec, WorkerPhase.HELD)
    assert obs.workers[worker.name].reason == "integration test hold (by user alice)"  # the schedd adds who
    backend.held_timeout = 1
    obs = await wait_phase(backend, spec, WorkerPhase.FAILED)  # once held longer than 1 s
    assert obs.workers[worker.name].reason == (
        "removed after being held longer than 1 s: integration test hold (by user alice)")
    assert await queue(backend, f"ClusterId == {worker.name.split('.')[0]}", ["JobStatus"]) in ([], [{"JobStatus": 3}])


async def test_service_restart_adopts_known_clusters_and_removes_orphans(harness):
    first = await harness.backend()
    keep = await harness.cluster("alice", "it-keep")
    orphan = await harness.cluster("bob", "it-orphan")
    for spec in (keep, orphan):
        await start(first, spec)
        track(spec, await first.submit_workers(spec, 1))
        await wait_phase(first, spec, WorkerPhase.RUNNING)
    await first.close()  # a service restart: clusters keep running
    harness.backends.remove(first)

    second = await harness.backend()
    assert {"it-keep", "it-orphan"} <= await second.list_cluster_ids()
    # Knowing no token of bob's, the service identity asks; the schedd refuses other users' jobs and
    # says so only in act()'s totals: the removal is reported, and the orphan is still there.
    live = 'CmsafCluster == "it-orphan" && JobStatus != 3'
    with pytest.raises(BackendError, match=r"^HTCondor removed 0 of 2 jobs \(2 permission denied\) of orphaned cluster it-orphan$"):
        await second.remove_cluster_resources("it-orphan")
    assert len(await queue(second, live, ["ClusterId"])) == 2  # its inputs job and its worker

    async def owner_tokens(owner):  # what the service's tokens provider gives: the owner's own token
        return {"condor": await harness.pool.token(owner)}

    second.tokens_provider = owner_tokens
    obs = await wait_phase(second, await harness.fresh(keep), WorkerPhase.RUNNING)  # the poll retries the removal
    assert obs.scheduler_alive
    assert await queue(second, live, ["ClusterId"]) == []
    ads = await queue(second, 'CmsafCluster == "it-orphan"', ["RemoveReason"])
    assert {ad["RemoveReason"] for ad in ads} <= {"cmsaf: orphaned cluster (by user bob)"}  # removed as bob
    assert "it-orphan" not in await second.scheduler_backend.list_cluster_ids()  # its local scheduler too
    harness.clusters.remove(orphan)


async def test_interleaved_users_own_their_jobs(harness):
    backend = await harness.backend()
    submitted = []
    for i, owner in enumerate(["alice", "bob", "alice", "bob", "alice"]):
        spec = await harness.cluster(owner, f"it-owner-{i}")
        spec.backend_state = {"schedd": backend.schedd_name, "scheduler_address": "tls://127.0.0.1:9"}
        submitted += [(owner, w.name) for w in await backend.submit_workers(spec, 2)]
    ads = await queue(backend, 'regexp("^it-owner-", CmsafCluster)', ["ClusterId", "ProcId", "Owner", "CmsafOwner", "CmsafRole"])
    owners = {f"{ad['ClusterId']}.{ad['ProcId']}": ad["Owner"] for ad in ads if ad["CmsafRole"] == "worker"}
    assert owners == dict((name, owner) for owner, name in submitted)
    assert len(ads) == len(submitted) + 5  # one inputs job per batch, owned by the same user
    assert all(ad["Owner"] == ad["CmsafOwner"] for ad in ads)


async def test_scheduler_as_a_job_publishes_its_address_and_serves_workers(harness):
    backend = await harness.backend(scheduler_placement="htcondor")
    spec = await harness.cluster("bob", "it-schedjob", site="T2_TEST")
    info = await start(backend, spec)
    assert spec.backend_state["scheduler_job"] and info.address.startswith("tls://")
    track(spec, await backend.submit_workers(await harness.fresh(spec), 1))
    await wait_phase(backend, spec, WorkerPhase.RUNNING)
    async with Client(info.address, security=cluster_security(spec.tls), asynchronous=True) as client:
        await client.wait_for_workers(1)
        assert await client.submit(lambda x: x * 2, 21) == 42


@by_value
def read_token(target_dir_env: str = "CMSAF_TOKEN_DIR") -> str:
    with open(os.path.join(os.environ[target_dir_env], "condor.token")) as f:
        return f.read()


async def test_tokens_are_refreshed_in_a_cluster_that_outlives_two_token_lifetimes(harness):
    lifetime = harness.pool.iam.lifetimes["access_token"]
    backend = await harness.backend()
    spec = await harness.cluster("alice", "it-refresh")
    info = await start(backend, spec)
    track(spec, await backend.submit_workers(spec, 1))
    await wait_phase(backend, spec, WorkerPhase.RUNNING)
    security = cluster_security(spec.tls)
    began, latest = time.time(), None
    while time.time() - began < 2.2 * lifetime:
        latest = await harness.pool.token("alice")
        result = await push_tokens(info.address, security, {"condor": latest})
        assert result.ok, result.failed
        await asyncio.sleep(lifetime / 3)
    async with Client(info.address, security=security, asynchronous=True) as client:
        on_workers = await client.run(read_token)
        on_scheduler = await client.run_on_scheduler(read_token)
    assert set(on_workers.values()) == {latest} and on_scheduler == latest
    assert jwt.decode(latest, options={"verify_signature": False})["exp"] > time.time()
    # the worker's job still runs, and HTCondor still answers the owner with the newest token
    obs = await wait_phase(backend, await harness.fresh(spec), WorkerPhase.RUNNING)
    assert obs.scheduler_alive


class SpoolingSeam(CondorSeam):
    """The real seam, plus a submission whose input files are spooled only when the test says so."""

    def submit_unspooled(self, schedd, description, files):
        import tempfile

        staging = tempfile.mkdtemp(prefix="cmsaf-it-spool-")
        for name, content in files.items():
            with open(os.path.join(staging, name), "w") as f:
                f.write(content)
        schedd_ = self._schedd(schedd)
        self._pending = schedd_.submit(self._htcondor.Submit(dict(description, initialdir=staging)), count=1, spool=True)
        return f"{self._pending.cluster()}.0"

    def spool_pending(self, schedd):
        self._schedd(schedd).spool(self._pending)


async def test_the_schedds_spooling_hold_is_queued_and_a_real_hold_after_it_is_surfaced(harness):
    backend = await harness.backend(seam_factory=SpoolingSeam, held_timeout=0)
    spec = await harness.cluster("alice", "it-spool")
    spec.backend_state = {"schedd": backend.schedd_name, "scheduler_address": "tls://127.0.0.1:9"}
    desc = worker_description(JobShape(cores=1, memory_gib=0.5, python=sys.executable), cluster_id=spec.id,
                              owner="alice", scheduler_address="tls://127.0.0.1:9", token_names=["condor"],
                              bearer="condor", tls=True)
    token = spec.tokens["condor"]
    job = await backend.processes.call("alice", token, "submit_unspooled", backend.schedd_name, desc,
                                       sandbox_files(spec.tokens, spec.tls))
    track(spec, [SubmittedWorker(name=job, backend_state={"job": job})])
    [ad] = await queue(backend, f"ClusterId == {job.split('.')[0]}", ["JobStatus", "HoldReasonCode", "HoldReason"])
    assert ad == {"JobStatus": 5, "HoldReasonCode": 16, "HoldReason": "Spooling input data files"}
    obs = (await backend.poll([spec]))[spec.id]
    assert (obs.workers[job].phase, obs.workers[job].reason) == (WorkerPhase.QUEUED, None)
    # while spooling, a user's hold cannot replace the schedd's: it is "already done"
    result = await backend.processes.call("alice", token, "act", backend.schedd_name, "Hold", [job], "too early")
    assert (result["TotalAlreadyDone"], result["TotalSuccess"]) == (1, 0)
    await backend.processes.call("alice", token, "spool_pending", backend.schedd_name)
    await wait_queue(backend, f"ClusterId == {job.split('.')[0]}", ["JobStatus"], lambda ads: ads and ads[0]["JobStatus"] != 5)
    result = await backend.processes.call("alice", token, "act", backend.schedd_name, "Hold", [job], "held right after spooling")
    assert result["TotalSuccess"] == 1
    obs = await wait_phase(backend, spec, WorkerPhase.HELD)
    assert obs.workers[job].reason == "held right after spooling (by user alice)"


async def test_a_worker_whose_sandbox_transfer_fails_is_held_with_htcondors_reason(harness):
    backend = await harness.backend(held_timeout=0)
    spec = await harness.cluster("bob", "it-transfer")
    spec.backend_state = {"schedd": backend.schedd_name, "scheduler_address": "tls://127.0.0.1:9"}
    track(spec, await backend.submit_workers(spec, 1))
    [inputs] = await queue(backend, 'CmsafCluster == "it-transfer" && CmsafRole == "inputs"', ["ClusterId", "ProcId", "Iwd"])
    # the spooled input files go (as if an admin removed that job): a later batch cannot get them
    holder = f"{inputs['ClusterId']}.{inputs['ProcId']}"
    result = await backend.processes.call("bob", spec.tokens["condor"], "act", backend.schedd_name, "Remove", [holder], "it")
    assert result["TotalSuccess"] == 1
    await wait_queue(backend, f"ClusterId == {inputs['ClusterId']}", ["JobStatus"], lambda ads: ads == [])
    [late] = await backend.submit_workers(spec, 1)  # the same files: the backend reuses that spool directory
    track(spec, [late])
    obs = await wait_phase(backend, spec, WorkerPhase.HELD, names=[late.name])
    reason = obs.workers[late.name].reason
    assert reason.startswith("Transfer input files failure") and inputs["Iwd"] in reason, reason
    [ad] = await queue(backend, f"ClusterId == {late.name.split('.')[0]}", ["HoldReasonCode"])
    assert ad["HoldReasonCode"] == 13  # TransferInputError


async def test_a_schedd_restart_while_a_cluster_runs_loses_nothing(harness):
    backend = await harness.backend()
    spec = await harness.cluster("alice", "it-schedd-restart")
    info = await start(backend, spec)
    workers = await backend.submit_workers(spec, 2)
    track(spec, workers)
    await wait_phase(backend, spec, WorkerPhase.RUNNING)
    await asyncio.to_thread(harness.pool.restart_schedd)
    obs = await wait_phase(backend, await harness.fresh(spec), WorkerPhase.RUNNING,
                           tolerate=("HTCondor schedd unreachable",))
    assert sorted(obs.workers) == sorted(w.name for w in workers)
    async with Client(info.address, security=cluster_security(spec.tls), asynchronous=True) as client:
        await client.wait_for_workers(2)
        assert await client.submit(sum, [4, 5]) == 9
        assert await client.run_on_scheduler(worker_names) == sorted(w.name for w in workers)
    ads = await queue(backend, 'CmsafCluster == "it-schedd-restart"', ["ClusterId", "ProcId", "CmsafRole", "JobStatus"])
    assert sorted(f"{ad['ClusterId']}.{ad['ProcId']}" for ad in ads if ad["CmsafRole"] == "worker") == sorted(
        w.name for w in workers)


async def test_the_cli_and_the_page_model_show_a_held_worker_with_its_reason(harness, tmp_path):
    """The service's reconciler and store over the real pool: HTCondor's hold reaches the cluster
    model the page renders (``workers.held_reasons``) and the CLI's text output."""
    from cmsaf_hub.client.cli import format_report, format_table
    from cmsaf_hub.client.report import ClusterReport
    from cmsaf_hub.service.crypto import SecretBox, new_crypt_key, parse_crypt_keys
    from cmsaf_hub.service.models import ClusterRecord, WorkerStatus, cluster_model
    from cmsaf_hub.service.reconciler import Reconciler
    from cmsaf_hub.service.store import Store

    backend = await harness.backend()
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    box = SecretBox(parse_crypt_keys(new_crypt_key()))

    async def owner_tokens(owner):
        return {"condor": await harness.pool.token(owner)}

    rec = Reconciler(backend=backend, store=store, secrets=box, tokens_provider=owner_tokens, poll_interval=1.0,
                     activity_interval=5.0, backoff_base=0.5)
    tls = generate_cluster_tls("it-page")
    record = ClusterRecord(id="it-page", owner="alice", options={"workers": 1, "cores": 1, "memory": 0.5},
                           created=time.time(), worker_target=1, tls_cert=tls.cert,
                           tls_key_encrypted=box.encrypt(tls.key))
    await store.add(record)
    harness.clusters.append(ClusterSpec(id="it-page", owner="alice", options={}))  # stopped at teardown
    await rec.start()
    try:
        rec.enqueue(record.id)
        deadline = time.monotonic() + PHASE_TIMEOUT
        while not (names := sorted(record.workers)):
            assert time.monotonic() < deadline, f"no worker submitted: {record.status} {record.reason}"
            await asyncio.sleep(0.5)
        token = await harness.pool.token("alice")
        result = await backend.processes.call("alice", token, "act", backend.schedd_name, "Hold", names[:1],
                                              "integration test: disk quota exceeded")
        assert result["TotalSuccess"] == 1
        while not (record.workers[names[0]].status is WorkerStatus.HELD):
            assert time.monotonic() < deadline, f"worker not held: {record.workers}"
            await asyncio.sleep(0.5)
        model = cluster_model(record, public_base="https://hub.example/services/cmsaf/")
        assert model["workers"]["held"] == 1
        reason = "integration test: disk quota exceeded (by user alice)"
        assert model["workers"]["held_reasons"] == [reason]
        report = ClusterReport.from_json(model)
        assert format_table([report]).splitlines()[-1] == f"it-page: held: {reason}"
        assert format_report(report).endswith(f"\n  held: {reason}")
    finally:
        await rec.stop()
        await store.close()
