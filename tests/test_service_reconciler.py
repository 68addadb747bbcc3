"""The reconciler with a real store and real local Dask processes (no hub): lifetimes and failures."""

import asyncio
import time

import pytest

from cmsaf_hub.service.backends.local import LocalBackend, exit_reason
from cmsaf_hub.service.crypto import SecretBox, generate_cluster_tls, new_crypt_key, parse_crypt_keys
from cmsaf_hub.service.models import ClusterRecord, ClusterStatus, WorkerStatus
from cmsaf_hub.service.probe import SchedulerProbe
from cmsaf_hub.service.reconciler import Reconciler
from cmsaf_hub.service.store import Store
from cmsaf_hub.service.workqueue import WorkQueue


@pytest.fixture
async def rig(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    box = SecretBox(parse_crypt_keys(new_crypt_key()))
    backends = []

    async def make(*, env=None, backend_class=LocalBackend, **traits):
        # lifetimes and failures as such; clusters running as their owners: tests/test_isolation_local.py
        backend = backend_class(state_dir=str(tmp_path / "clusters"), stop_grace=2, same_user=True)
        backends.append(backend)
        rec = Reconciler(backend=backend, store=store, secrets=box, poll_interval=0.2, activity_interval=0.3,
                         backoff_base=0.1, **traits)
        rec.env_hook = lambda record: dict(env or {})
        await rec.start()
        return rec

    async def create(rec, workers=0):
        tls = generate_cluster_tls("x")
        record = ClusterRecord(id=f"c{time.time_ns()}", owner="alice", options={"workers": workers, "cores": 1,
                               "memory": 1.0}, created=time.time(), worker_target=workers,
                               tls_cert=tls.cert, tls_key_encrypted=box.encrypt(tls.key))
        await store.add(record)
        rec.enqueue(record.id)
        return record

    yield make, create, store
    for backend in backends:
        for cid in await backend.list_cluster_ids():
            await backend.remove_cluster_resources(cid)
    await store.close()


async def until(predicate, timeout=60):
    for _ in range(int(timeout / 0.1)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached")


@pytest.mark.slow
async def test_idle_culling_and_max_lifetime(rig):
    make, create, store = rig
    rec = await make(idle_timeout=1.5, max_lifetime=600)
    try:
        record = await create(rec)
        # the end state and its reason, not a 1.5 s window of "running" a loaded machine can miss;
        # ``started`` is set only when the scheduler was seen running
        await until(lambda: not record.status.active, timeout=60)
        assert record.status is ClusterStatus.STOPPED and record.started is not None
        assert record.reason == "idle for more than 1.5 s"
    finally:
        await rec.stop()

    rec = await make(max_lifetime=1)
    try:
        record = await create(rec)
        await until(lambda: not record.status.active, timeout=30)
        assert record.status is ClusterStatus.STOPPED and record.reason == "reached the maximum lifetime of 1 s"
    finally:
        await rec.stop()


@pytest.mark.slow
async def test_worker_failures_in_a_row_fail_the_cluster(rig):
    make, create, store = rig
    # workers import a preload that does not exist and die at start; the scheduler is unaffected
    rec = await make(worker_failure_limit=3, env={"DASK_DISTRIBUTED__WORKER__PRELOAD": '["no_such_module_xyz"]'})
    try:
        record = await create(rec, workers=2)
        await until(lambda: record.status is ClusterStatus.FAILED, timeout=90)
        # two workers can fail in the same poll: the count reaches the limit or just passes it
        count, _, rest = record.reason.partition(" ")
        assert int(count) in (3, 4) and rest.startswith("worker failures in a row; last: worker process exited")
        assert "No module named 'no_such_module_xyz'" in record.reason
        assert record.workers_failed_total >= 3 and not record.workers
    finally:
        await rec.stop()
    reloaded = Store(store.url)
    await reloaded.open()
    assert reloaded.get(record.id).status is ClusterStatus.FAILED and reloaded.get(record.id).reason == record.reason
    await reloaded.close()


class HeldAdaptiveAnswer(SchedulerProbe):
    """The real probe, holding the scheduler's adaptive answer until the test lets it through, so a
    user's change can land while the reconciler waits for it."""

    def __init__(self) -> None:
        super().__init__()
        self.answered, self.release = asyncio.Event(), asyncio.Event()

    async def adaptive_target(self, address: str, cert: str, key: str) -> int:
        wanted = await super().adaptive_target(address, cert, key)
        self.answered.set()
        await self.release.wait()
        return wanted


@pytest.mark.slow
async def test_adaptivity_turned_off_during_a_probe_keeps_the_size(rig):
    """dask-gateway's ``adapt(active=False)`` while the scheduler is being asked: the answer that
    comes back after is dropped (it used to be clamped by the removed bounds, to 0 workers)."""
    make, create, store = rig
    probe = HeldAdaptiveAnswer()
    rec = await make(probe=probe)
    try:
        record = await create(rec, workers=2)
        running = lambda: [w for w in record.workers.values() if w.status is WorkerStatus.RUNNING]  # noqa: E731
        await until(lambda: record.status is ClusterStatus.RUNNING and len(running()) == 2, timeout=90)
        record.adapt_minimum, record.adapt_maximum = 1, 3
        await store.save(record)
        await asyncio.wait_for(probe.answered.wait(), 30)  # idle: the scheduler wants fewer than 2
        record.adapt_minimum = record.adapt_maximum = None  # what the adapt handler does
        await store.save(record)
        probe.release.set()
        await asyncio.sleep(1.0)  # several activity checks
        assert record.worker_target == 2 and len(running()) == 2
    finally:
        await rec.stop()


class HeldPoll(LocalBackend):
    """The real backend; once ``hold`` is set, its next poll looks, then waits for ``hold`` before
    answering, so that a worker can be submitted between the look and the answer."""

    hold: asyncio.Event | None = None
    looked: asyncio.Event | None = None

    async def poll(self, clusters):
        observations = await super().poll(clusters)
        if self.hold is not None:
            hold, self.hold = self.hold, None
            self.looked.set()
            await hold.wait()
        return observations


@pytest.mark.slow
async def test_a_worker_submitted_while_a_poll_runs_is_kept(rig):
    """The poll did not see a worker that did not exist when it looked: that worker is neither
    forgotten as exited nor replaced (and then stopped as a stray when the next poll sees it)."""
    make, create, store = rig
    rec = await make(backend_class=HeldPoll)
    backend = rec.backend
    try:
        record = await create(rec, workers=1)
        running = lambda: {n for n, w in record.workers.items() if w.status is WorkerStatus.RUNNING}  # noqa: E731
        await until(lambda: record.status is ClusterStatus.RUNNING and len(running()) == 1, timeout=90)
        first = set(record.workers)
        hold = backend.hold = asyncio.Event()
        backend.looked = asyncio.Event()
        await asyncio.wait_for(backend.looked.wait(), 30)
        record.worker_target = 2  # what a scale request does
        await store.save(record)
        rec.enqueue(record.id)
        await until(lambda: len(record.workers) == 2 and not rec.queue.processing(record.id), timeout=30)
        (added,) = set(record.workers) - first
        hold.set()
        await until(lambda: len(running()) == 2, timeout=60)
        await asyncio.sleep(1.0)  # several more polls: no replacement, no stray stopped
        assert set(record.workers) == running() == first | {added}
    finally:
        await rec.stop()


async def test_scheduler_start_failure_fails_after_retries(rig):
    make, create, store = rig
    rec = await make(start_attempts=2)
    rec.backend.python = "/bin/false"
    try:
        record = await create(rec)
        await until(lambda: record.status is ClusterStatus.FAILED, timeout=30)
        assert record.reason.startswith("the scheduler could not start: the scheduler exited while starting")
    finally:
        await rec.stop()


async def test_work_queue_dedupes_and_backs_off():
    q = WorkQueue(backoff_base=0.05, backoff_max=0.1)
    q.put("a"), q.put("a"), q.put("b")
    assert len(q) == 2
    assert await q.get() == "a"
    q.put("a")  # while processing: runs again after done
    assert len(q) == 1
    q.done("a")
    assert len(q) == 2
    assert await q.get() == "b" and await q.get() == "a"
    q.done("b")
    q.done("a", failed=True)
    assert q.failures("a") == 1 and len(q) == 0
    assert await asyncio.wait_for(q.get(), 1) == "a"  # retried after the backoff
    q.done("a", failed=True)
    assert q.backoff("a") == 0.1  # capped
    q.close()


def test_exit_reason_is_the_root_cause_of_the_last_traceback():
    nanny = """Traceback (most recent call last):
  File "x.py", line 1, in <module>
ModuleNotFoundError: No module named 'no_such_module_xyz'

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "core.py", line 517, in start
RuntimeError: Nanny failed to start.
"""
    assert exit_reason(nanny) == "ModuleNotFoundError: No module named 'no_such_module_xyz'"
    # an earlier, unrelated traceback is not the cause of the last one
    assert exit_reason("KeyError: 'a'\nrecovered\nTraceback (most recent call last):\nOSError: disk full\n") == (
        "OSError: disk full")
    assert exit_reason("2026 distributed.worker - INFO - stopping\n") == "2026 distributed.worker - INFO - stopping"
    assert exit_reason("") == ""
