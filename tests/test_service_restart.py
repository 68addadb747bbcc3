"""Service restarts (the hub restarts its managed service) and dying workers, with real processes."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
from typing import Callable

import psutil
import pytest
from distributed import Client

from cmsaf_hub.service.backends.local import process_start, worker_command
from cmsaf_hub.service.probe import client_security
from tests.service_helpers import service_hub_factory  # noqa: F401 (fixture)
from tests.test_service_api import _record

pytestmark = pytest.mark.slow


def service_pid(sh) -> int:
    db = str(sh.service_dir / "service.sqlite")
    pids = [p.pid for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and "cmsaf_hub" in p.info["cmdline"] and any(db in a for a in p.info["cmdline"])]
    assert len(pids) == 1, pids
    return pids[0]


async def restart_service(sh, while_down: Callable[[], None] = lambda: None) -> None:
    """Kill the service, call ``while_down``; the hub starts it again (JupyterHub restarts managed
    services that exit).

    The hub notices within its 30 s poll of managed services; a new service takes over a second to
    start, which is ``while_down``'s time.
    """
    old = service_pid(sh)
    os.kill(old, signal.SIGKILL)
    psutil.Process(old).wait(30) if psutil.pid_exists(old) else None
    while_down()
    await sh.wait_ready(timeout=90)
    assert service_pid(sh) != old


def plant_orphan(state_dir) -> subprocess.Popen:
    """A cluster the backend holds but the database does not: a directory with a live process."""
    d = state_dir / "0rphan"
    (d / "pids").mkdir(parents=True)
    (d / "logs").mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    (d / "pids" / "scheduler").write_text(f"{proc.pid} {process_start(proc.pid)!r}")
    return proc


def plant_stray_worker(cluster_dir, cluster_id: str, address: str) -> subprocess.Popen:
    """A worker the backend runs for the cluster but the database does not list: what a service
    killed between starting a worker and recording it leaves. Reaped at once when it exits."""
    name = f"{cluster_id[:8]}-5tray000"
    cmd = worker_command(sys.executable, address, name, {}, str(cluster_dir / "run"))
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    (cluster_dir / "pids" / name).write_text(f"{proc.pid} {process_start(proc.pid)!r}")
    threading.Thread(target=proc.wait, daemon=True).start()
    return proc


async def test_restart_readopts_resumes_and_cleans_orphans(service_hub_factory, tmp_path):
    sh = await service_hub_factory()
    token = await sh.hub.create_user("alice")
    async with sh.client(token) as alice:
        cid = (await alice.post("clusters", json={"options": {"workers": 2}})).json()["id"]
        before = await sh.wait_status(alice, cid, "running")
        await sh.wait_workers(alice, cid, 2)
        record = await _record(sh, cid)
        scheduler_pid = _registry_pids(sh, cid)["scheduler"]
        orphan = plant_orphan(sh.service_dir / "cmsaf-local-clusters")
        security = client_security(record["cert"], record["key"])

        # an unfinished transition: the target changes, the service dies right after answering,
        # leaving a worker it started but did not record (planted while the service is down: a
        # running service stops such strays at its next poll)
        assert (await alice.post(f"clusters/{cid}/scale", json={"workers": 3})).status_code == 200
        strays = []
        await restart_service(sh, lambda: strays.append(
            plant_stray_worker(sh.service_dir / "cmsaf-local-clusters" / cid, cid, record["address"])))
        # stopped before the restarted service answers, so before any replacement starts
        assert strays[0].returncode is not None

        after = await sh.wait_workers(alice, cid, 3)
        assert after["status"] == "running" and after["started"] == before["started"]
        assert _registry_pids(sh, cid)["scheduler"] == scheduler_pid  # same scheduler, re-adopted
        assert orphan.wait(30) is not None  # the orphan's process was stopped...
        assert not (sh.service_dir / "cmsaf-local-clusters" / "0rphan").exists()  # ...and its files removed

        async with Client(record["address"], security=security, asynchronous=True, timeout=30) as client:
            await client.wait_for_workers(3, timeout=60)
            assert await client.submit(sum, range(10)) == 45
            names = {w["name"] for w in client.scheduler_info()["workers"].values()}
            # no stray duplicates
            assert len(names) == 3 and f"{cid[:8]}-5tray000" not in names, (names, _cluster_log(sh, cid))

        # a worker dies: reported as failed and replaced to meet the target
        victim = next(n for n in _registry_pids(sh, cid) if n != "scheduler")
        os.kill(_registry_pids(sh, cid)[victim], signal.SIGKILL)
        for _ in range(300):
            model = (await alice.get(f"clusters/{cid}")).json()
            if model["workers"]["failed"] == 1 and model["workers"]["running"] == 3:
                break
            await _sleep(0.2)
        assert model["workers"]["failed"] == 1 and model["workers"]["running"] == 3, model["workers"]
        assert victim not in _registry_pids(sh, cid)

    # a graceful stop (the hub stopping sends SIGTERM) leaves clusters running for the next start
    pids = _registry_pids(sh, cid)
    await sh.hub.stop()
    try:
        assert all(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in pids.values()), pids
        assert "cmsaf service stopped" in sh.hub.log_text()
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _cluster_log(sh, cid) -> list[str]:
    """The hub's log lines about the cluster (both services write there)."""
    return [line for line in sh.hub.log_text().splitlines() if cid in line]


def _registry_pids(sh, cid) -> dict[str, int]:
    d = sh.service_dir / "cmsaf-local-clusters" / cid / "pids"
    return {p.name: int(p.read_text().split()[0]) for p in d.iterdir()}


async def _sleep(s):
    import asyncio

    await asyncio.sleep(s)
