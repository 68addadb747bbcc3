"""LocalBackend against real `dask scheduler` / `dask worker` processes."""

import asyncio
import os
import signal

import pytest
from distributed import Client
from distributed.security import Security

from cmsaf_hub.service.backends.base import BackendError, ClusterSpec, WorkerPhase
from cmsaf_hub.service.backends.local import LocalBackend
from cmsaf_hub.service.crypto import generate_cluster_tls


def client_security(tls: dict) -> Security:
    return Security(
        tls_ca_file=tls["cert"], tls_client_cert=tls["cert"], tls_client_key=tls["key"], require_encryption=True
    )


async def poll_until(backend, spec, predicate, timeout=60):
    for _ in range(int(timeout / 0.2)):
        obs = (await backend.poll([spec]))[spec.id]
        if predicate(obs):
            return obs
        await asyncio.sleep(0.2)
    raise AssertionError(f"condition not reached; last observation {obs}")


@pytest.fixture
async def backend(tmp_path):
    b = LocalBackend(state_dir=str(tmp_path / "clusters"))
    await b.start()
    yield b
    await b.remove_all_clusters()
    assert await b.list_cluster_ids() == set()
    await b.close()


@pytest.mark.slow
async def test_lifecycle_compute_kill_stop(backend, tmp_path):
    tls = generate_cluster_tls("c1").as_dict()
    spec = ClusterSpec(id="c1abcdef", owner="alice", options={"cores": 1, "memory": 1.0}, tls=tls)
    assert tls["key"] not in repr(spec)

    info = await backend.start_scheduler(spec)
    assert info.address.startswith("tls://127.0.0.1:")
    assert info.backend_state["ws_address"].startswith("wss://127.0.0.1:")
    spec.backend_state = info.backend_state

    submitted = await backend.submit_workers(spec, 2)
    assert len({w.name for w in submitted}) == 2
    spec.backend_state = {**info.backend_state, "workers": {w.name: w.backend_state for w in submitted}}

    async with Client(info.address, security=client_security(tls), asynchronous=True, timeout=30) as client:
        await client.wait_for_workers(2, timeout=60)
        assert await client.submit(sum, [1, 2, 3]) == 6
        assert sorted(client.scheduler_info()["workers"][a]["name"] for a in client.scheduler_info()["workers"]) == sorted(
            w.name for w in submitted
        )

    # the websocket listener requires the cluster's certificate too
    async with Client(info.backend_state["ws_address"], security=client_security(tls), asynchronous=True, timeout=30) as c:
        assert await c.submit(lambda: 41 + 1) == 42
    with pytest.raises(OSError):
        await Client(info.backend_state["ws_address"], asynchronous=True, timeout=3)

    # running once each worker's log says it registered (it may log that just after the scheduler knows)
    obs = await poll_until(backend, spec, lambda o: all(w.phase is WorkerPhase.RUNNING for w in o.workers.values()))
    assert obs.scheduler_alive
    assert {n: o.phase for n, o in obs.workers.items()} == {w.name: WorkerPhase.RUNNING for w in submitted}

    victim, survivor = submitted
    os.kill(victim.backend_state["pid"], signal.SIGKILL)
    obs = await poll_until(backend, spec, lambda o: o.workers[victim.name].phase is WorkerPhase.FAILED)
    assert "exited" in obs.workers[victim.name].reason
    assert obs.workers[survivor.name].phase is WorkerPhase.RUNNING

    await backend.stop_workers(spec, {survivor.name: survivor.backend_state})
    obs = (await backend.poll([spec]))[spec.id]
    assert obs.workers[survivor.name].phase is WorkerPhase.EXITED

    logs = await backend.logs(spec)
    assert "Scheduler at" in logs["scheduler"] and victim.name in logs
    assert tls["key"] not in "".join(logs.values())

    assert await backend.list_cluster_ids() == {spec.id}
    await backend.stop_cluster(spec)
    obs = (await backend.poll([spec]))[spec.id]
    assert not obs.scheduler_alive and obs.scheduler_reason
    await backend.stop_cluster(spec)  # idempotent
    await backend.remove_cluster_resources(spec.id)
    assert await backend.list_cluster_ids() == set()


@pytest.mark.slow
async def test_survives_a_new_backend_instance_and_orphans_are_removed(backend, tmp_path):
    """A second backend (a restarted service) observes and removes the first one's processes."""
    tls = generate_cluster_tls("c2").as_dict()
    spec = ClusterSpec(id="c2orphan", owner="bob", options={"cores": 1, "memory": 1.0}, tls=tls)
    info = await backend.start_scheduler(spec)
    spec.backend_state = info.backend_state
    [worker] = await backend.submit_workers(spec, 1)
    spec.backend_state = {**info.backend_state, "workers": {worker.name: worker.backend_state}}

    other = ClusterSpec(id="c2other", owner="bob", options={}, tls=generate_cluster_tls("c2o").as_dict())
    await backend.start_scheduler(other)  # left running: the fixture's remove_all_clusters must stop it

    restarted = LocalBackend(state_dir=backend.state_dir)
    obs = (await restarted.poll([spec]))[spec.id]
    assert obs.scheduler_alive and obs.workers[worker.name].phase in (WorkerPhase.QUEUED, WorkerPhase.RUNNING)
    # queued until the worker's log shows it registered with the scheduler
    obs = await poll_until(restarted, spec, lambda o: o.workers[worker.name].phase is WorkerPhase.RUNNING)
    # a worker the service does not list is still reported, so the service can stop it
    unlisted = (await restarted.poll([ClusterSpec(id=spec.id, owner="bob", options={}, backend_state=info.backend_state)]))
    assert unlisted[spec.id].workers[worker.name].reason == "not known to the service"
    assert await restarted.list_cluster_ids() == {spec.id, other.id}
    await restarted.remove_cluster_resources(spec.id)
    obs = await poll_until(backend, spec, lambda o: not o.scheduler_alive)
    assert obs.workers[worker.name].phase is not WorkerPhase.RUNNING
    assert await restarted.list_cluster_ids() == {other.id}


async def test_scheduler_that_cannot_start_is_a_clear_error(backend):
    bad = LocalBackend(state_dir=backend.state_dir, python="/bin/false")
    spec = ClusterSpec(id="c3broken", owner="eve", options={}, tls=generate_cluster_tls("c3").as_dict())
    with pytest.raises(BackendError, match="the scheduler exited while starting") as err:
        await bad.start_scheduler(spec)
    assert err.value.retryable
    with pytest.raises(BackendError, match="no TLS credentials"):
        await bad.start_scheduler(ClusterSpec(id="c4", owner="eve", options={}))
    with pytest.raises(BackendError, match="invalid cluster id"):
        await bad.logs(ClusterSpec(id="../etc", owner="eve", options={}))


def test_scheduler_listener_host_is_configurable_and_dashboard_stays_on_loopback():
    from cmsaf_hub.service.backends.local import scheduler_command

    cmd = scheduler_command("/py", "/services/cmsaf/clusters/c1/dashboard", host="0.0.0.0")
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--dashboard-address") + 1] == "127.0.0.1:0"
    assert cmd[cmd.index("--dashboard-prefix") + 1] == "/services/cmsaf/clusters/c1/dashboard"
    assert scheduler_command("/py")[scheduler_command("/py").index("--host") + 1] == "127.0.0.1"
