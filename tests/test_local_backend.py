"""LocalBackend against real `dask scheduler` / `dask worker` processes."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
import ssl

import psutil
import pytest
from distributed import Client
from distributed.security import Security

from cmsaf_hub.service.backends.base import BackendError, ClusterSpec, WorkerPhase
from cmsaf_hub.service.backends.local import (
    Account,
    LocalBackend,
    cluster_process_env,
    environment_python,
    scheduler_command,
    worker_command,
)
from cmsaf_hub.service.crypto import generate_cluster_tls
from devstack.hub import overlay_env


def client_security(tls: dict) -> Security:
    return Security(
        tls_ca_file=tls["cert"], tls_client_cert=tls["cert"], tls_client_key=tls["key"], require_encryption=True
    )


async def tls_answer(address: str, tls: dict, tmp_path, *, with_cert: bool) -> str:
    """How a TLS listener of the cluster answers a client that trusts the cluster's CA: the protocol
    of its HTTP reply to a GET, or the reason of the TLS error that ended the connection."""
    host, port = address.split("://", 1)[1].rsplit(":", 1)
    context = ssl.create_default_context(cadata=tls["cert"])
    context.check_hostname = False  # Dask's cluster certificates name no host
    if with_cert:
        (tmp_path / "client.pem").write_text(tls["cert"] + tls["key"])
        context.load_cert_chain(tmp_path / "client.pem")
    try:
        reader, writer = await asyncio.open_connection(host, int(port), ssl=context)
        if with_cert:  # without one, send nothing: a listener that closes with our request unread
            # resets the connection, and the reset can overtake its certificate-required alert
            writer.write(b"GET / HTTP/1.1\r\nHost: scheduler\r\n\r\n")
            await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        writer.close()
    except ssl.SSLError as e:
        return e.reason
    return status_line.decode().split(" ", 1)[0]


async def poll_until(backend, spec, predicate, timeout=60):
    for _ in range(int(timeout / 0.2)):
        obs = (await backend.poll([spec]))[spec.id]
        if predicate(obs):
            return obs
        await asyncio.sleep(0.2)
    raise AssertionError(f"condition not reached; last observation {obs}")


@pytest.fixture
async def backend(tmp_path):
    # the lifecycle as such; running clusters as their owners is tests/test_isolation_local.py's
    b = LocalBackend(state_dir=str(tmp_path / "clusters"), same_user=True)
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
    # ... which the listener itself demands: a client trusting the cluster's CA but without its
    # certificate is refused in the TLS handshake, the same client with it gets an HTTP answer
    assert await tls_answer(info.backend_state["ws_address"], tls, tmp_path, with_cert=True) == "HTTP/1.1"
    assert await tls_answer(info.backend_state["ws_address"], tls, tmp_path, with_cert=False) == (
        "TLSV13_ALERT_CERTIFICATE_REQUIRED")

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

    restarted = LocalBackend(state_dir=backend.state_dir, same_user=True)
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


async def test_a_clock_adjustment_does_not_make_live_processes_look_gone(backend, monkeypatch):
    """psutil's create_time adds the kernel's boot time as the wall clock now puts it: an NTP or VM
    clock step moves that by a second, and a registry comparing it would see every process gone."""
    spec = ClusterSpec(id="c6clock", owner="bob", options={}, tls=generate_cluster_tls("c6").as_dict())
    info = await backend.start_scheduler(spec)
    spec.backend_state = info.backend_state
    [worker] = await backend.submit_workers(spec, 1)
    spec.backend_state = {**info.backend_state, "workers": {worker.name: worker.backend_state}}
    pid = info.backend_state["scheduler"]["pid"]
    before = psutil.Process(pid).create_time()
    stepped = psutil._pslinux.boot_time() + 1.0
    monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: stepped)  # what the step does to /proc/stat's btime
    assert psutil.Process(pid).create_time() == pytest.approx(before + 1.0)
    obs = (await backend.poll([spec]))[spec.id]
    assert obs.scheduler_alive and obs.workers[worker.name].phase is not WorkerPhase.FAILED, obs


#: A service that starts a process and is killed before it registers the pid (its write of the
#: registry file kills it): prints the pid it was about to register.
DIES_REGISTERING = """
import os, pwd, signal, sys
from pathlib import Path
from cmsaf_hub.service.backends.local import Account, LocalBackend

cluster_dir, marker = Path(sys.argv[1]), sys.argv[2]
(cluster_dir / "logs").mkdir(parents=True)
(cluster_dir / "pids").mkdir()

def killed(path, text):
    print(text.split()[0], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

Path.write_text = killed
LocalBackend(state_dir=str(cluster_dir.parent), same_user=True)._spawn(
    cluster_dir, "w", [sys.executable, "-c", "import time; time.sleep(120)", marker], dict(os.environ),
    Account.from_passwd(pwd.getpwuid(os.getuid())), str(cluster_dir),
)
"""


def _runs(pid: int, marker: str) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and marker in proc.cmdline()
    except psutil.Error:
        return False


def test_a_process_whose_service_died_before_registering_it_never_runs(tmp_path):
    """No restarted service could find it (it is in no registry), so it must not run at all."""
    marker = f"cmsaf-unregistered-{time.time_ns()}"
    service = subprocess.run([sys.executable, "-c", DIES_REGISTERING, str(tmp_path / "c" / "c5"), marker],
                             capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1])
    assert service.returncode == -signal.SIGKILL, service.stderr
    pid = int(service.stdout)
    try:
        for _ in range(100):
            if not _runs(pid, marker):
                break
            time.sleep(0.1)
        assert not _runs(pid, marker), "the unregistered process runs"
        assert not list((tmp_path / "c" / "c5" / "pids").iterdir())
    finally:
        if _runs(pid, marker):
            os.kill(pid, signal.SIGKILL)


async def test_scheduler_that_cannot_start_is_a_clear_error(backend):
    bad = LocalBackend(state_dir=backend.state_dir, python="/bin/false", same_user=True)
    spec = ClusterSpec(id="c3broken", owner="eve", options={}, tls=generate_cluster_tls("c3").as_dict())
    with pytest.raises(BackendError, match="the scheduler exited while starting") as err:
        await bad.start_scheduler(spec)
    assert err.value.retryable
    with pytest.raises(BackendError, match="no TLS credentials"):
        await bad.start_scheduler(ClusterSpec(id="c4", owner="eve", options={}))
    with pytest.raises(BackendError, match="invalid cluster id"):
        await bad.logs(ClusterSpec(id="../etc", owner="eve", options={}))


def spec_opts(cmd: list[str]) -> dict:
    assert cmd[1:4] == ["-m", "distributed.cli.dask_spec", "--spec"]
    spec = json.loads(cmd[4])
    assert spec["cls"] == "cmsaf_hub.service.backends.local_preload.ClientCertScheduler"
    return spec["opts"]


def test_scheduler_listener_host_is_configurable_and_dashboard_stays_on_loopback():
    opts = spec_opts(scheduler_command("/py", "/st/c1/run", "/services/cmsaf/clusters/c1/dashboard", host="0.0.0.0"))
    assert opts["host"] == "0.0.0.0"
    assert opts["dashboard_address"] == "127.0.0.1:0"
    assert opts["http_prefix"] == "/services/cmsaf/clusters/c1/dashboard"
    assert opts["security"] == {
        "tls_ca_file": "/st/c1/run/tls.pem", "tls_scheduler_cert": "/st/c1/run/tls.pem",
        "tls_scheduler_key": "/st/c1/run/tls.key", "require_encryption": True,
    }
    assert spec_opts(scheduler_command("/py", "/r"))["host"] == "127.0.0.1"
    assert "http_prefix" not in spec_opts(scheduler_command("/py", "/r"))


def test_workers_run_under_a_nanny_with_the_memory_limit_and_loopback_https():
    cmd = worker_command("/env/bin/python", "tls://127.0.0.1:1", "w1", {"cores": 2, "memory": 1.5}, "/st/c1/run")
    assert cmd[:4] == ["/env/bin/python", "-m", "distributed.cli.dask_worker", "tls://127.0.0.1:1"]
    assert "--nanny" in cmd and "--no-nanny" not in cmd
    assert cmd[cmd.index("--memory-limit") + 1] == str(int(1.5 * 2**30))
    assert cmd[cmd.index("--nthreads") + 1] == "2"
    assert cmd[cmd.index("--worker-class") + 1] == "cmsaf_hub.service.backends.local_preload.ClientCertWorker"
    assert cmd[cmd.index("--dashboard-address") + 1] == "127.0.0.1:0"  # not distributed's 0.0.0.0
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--local-directory") + 1] == "/st/c1/run/workers/w1"


ACCOUNT = Account("alice", 1501, 1501, (1501,), "/home/alice", "/bin/bash")


def test_cluster_environment_is_built_from_the_allowlist_only():
    service_env = {
        "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/root", "USER": "root",
        "JUPYTERHUB_API_TOKEN": "service-token", "CMSAF_SERVICE_CRYPT_KEY": "k", "CMSAF_SERVICE_CRYPT_KEY_FILE": "/k",
        "JUPYTERHUB_CRYPT_KEY": "hk", "CMSAF_IAM_CLIENT_SECRET": "cs", "PYTHONPATH": "/repo",
    }
    env = cluster_process_env(
        service_env, inherit=LocalBackend().inherit_env, account=ACCOUNT, python="/envs/coffea/bin/python",
        token_dir="/st/c1/run/tokens", bearer_token_file="/st/c1/run/tokens/xrootd.token",
        cluster_env={"CMSAF_XCACHE_URL": "root://cache:1094"},
    )
    assert env == {
        "PATH": "/envs/coffea/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/home/alice", "USER": "alice", "LOGNAME": "alice", "SHELL": "/bin/bash",
        "CMSAF_TOKEN_DIR": "/st/c1/run/tokens", "BEARER_TOKEN_FILE": "/st/c1/run/tokens/xrootd.token",
        "CMSAF_XCACHE_URL": "root://cache:1094",
    }


def test_the_image_option_picks_an_admin_listed_environment():
    envs = {"coffea": "/opt/envs/coffea", "py": "/opt/py/bin/python3.11"}
    assert environment_python(None, "/venv/bin/python", envs) == "/venv/bin/python"
    assert environment_python("coffea", "/venv/bin/python", envs) == "/opt/envs/coffea/bin/python"
    assert environment_python("py", "/venv/bin/python", envs) == "/opt/py/bin/python3.11"
    with pytest.raises(BackendError, match=r"environment 'root' is not offered by this facility \(offered: 'coffea', 'py'\)"):
        environment_python("root", "/venv/bin/python", envs)


async def test_a_hub_user_without_an_os_account_is_a_clear_error(tmp_path):
    """Isolation is the default: no OS account, no cluster (and never the service's own user)."""
    isolated = LocalBackend(state_dir=str(tmp_path / "clusters"))
    spec = ClusterSpec(id="c5nouser", owner="no-such-user-cmsaf", options={}, tls=generate_cluster_tls("c5").as_dict())
    expected = (r"hub user 'no-such-user-cmsaf' has no OS account 'no-such-user-cmsaf'" if os.geteuid() == 0
                else "the service is not running as root")
    with pytest.raises(BackendError, match=expected):
        await isolated.start_scheduler(spec)
    assert not (tmp_path / "clusters" / spec.id).exists()
    # positive control: the same spec starts in the explicit same-user mode
    same = LocalBackend(state_dir=str(tmp_path / "clusters"), same_user=True)
    try:
        info = await same.start_scheduler(spec)
        assert info.dashboard_address.startswith("https://127.0.0.1:")
    finally:
        await same.remove_all_clusters()


@pytest.mark.slow
async def test_the_nanny_enforces_the_memory_limit(backend):
    """Like `dask worker`'s defaults: past 95 % of --memory-limit the nanny restarts the worker."""
    tls = generate_cluster_tls("c6").as_dict()
    spec = ClusterSpec(id="c6memory", owner="alice", options={"cores": 1, "memory": 0.5}, tls=tls)
    info = await backend.start_scheduler(spec)
    spec.backend_state = info.backend_state
    [worker] = await backend.submit_workers(spec, 1)

    def hog(megabytes: int, hold: float) -> int:
        import time

        block = bytearray(megabytes * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1  # touch every page: resident, not just reserved
        time.sleep(hold)
        return len(block)

    async with Client(info.address, security=client_security(tls), asynchronous=True, timeout=30) as client:
        await client.wait_for_workers(1, timeout=60)
        [before] = client.scheduler_info()["workers"]
        assert await client.submit(hog, 1, 0, pure=False, key="small") == 2**20  # under the limit: fine
        big = client.submit(hog, 600, 60, pure=False, key="big")  # 600 MiB against a 512 MiB limit
        for _ in range(600):
            log = (await backend.logs(spec)).get(worker.name, "")
            if "exceeded 95% memory budget. Restarting..." in log:
                break
            await asyncio.sleep(0.2)
        assert f"Worker {before} (pid=" in log and "exceeded 95% memory budget. Restarting..." in log
        await big.cancel()
        for _ in range(300):  # the nanny's new worker process registers anew
            now = set((await client.scheduler.identity())["workers"])
            if now - {before}:
                break
            await asyncio.sleep(0.2)
        assert len(now - {before}) == 1


@pytest.mark.slow
async def test_the_image_option_runs_the_cluster_in_the_chosen_environment(tmp_path):
    """``image`` names an admin-listed environment: scheduler and workers run its interpreter."""
    env_dir = tmp_path / "coffea-env"
    overlay_env(env_dir, Path(sys.base_prefix) / "bin" / "python3")
    b = LocalBackend(state_dir=str(tmp_path / "clusters"), same_user=True, environments={"coffea": str(env_dir)})
    tls = generate_cluster_tls("c7").as_dict()
    spec = ClusterSpec(id="c7envsel", owner="alice", options={"cores": 1, "memory": 1.0, "image": "coffea"}, tls=tls)
    try:
        info = await b.start_scheduler(spec)
        spec.backend_state = info.backend_state
        await b.submit_workers(spec, 1)
        async with Client(info.address, security=client_security(tls), asynchronous=True, timeout=30) as client:
            await client.wait_for_workers(1, timeout=60)
            worker_python = await client.submit(lambda: __import__("sys").executable, pure=False)
            scheduler_python = await client.run_on_scheduler(lambda: __import__("sys").executable)
        assert worker_python == scheduler_python == str(env_dir / "bin" / "python")
        with pytest.raises(BackendError, match=r"environment 'root-6' is not offered by this facility \(offered: 'coffea'\)"):
            await b.start_scheduler(ClusterSpec(id="c8", owner="alice", options={"image": "root-6"}, tls=tls))
    finally:
        await b.remove_all_clusters()
