"""Workers on outbound-only sites as full cluster members (issue 20), against the real stack.

A worker runs in a network namespace that reaches only the hub (a veth pair whose host side
forwards to the hub's proxy); it joins a real service cluster, and the scheduler, the notebook-side
client and a facility worker outside the namespace all open connections to it through the broker.
"""

from __future__ import annotations

import asyncio
import operator
import os
import signal
import subprocess
import sys
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from distributed import Client
from distributed.comm import connect
from distributed.comm.core import FatalCommClosedError

from cmsaf_hub.comm import hub_connection_args, hub_security
from cmsaf_hub.reverse import BROKER_URL_ENV, hub_cluster_address, outbound_worker_command
from devstack.hub import free_port
from devstack.ingress import start_ingress
from devstack.netns import PortForward, create_site, remove_site, site_exists
from devstack.service_hubs import start_service_hub

pytestmark = pytest.mark.slow


@pytest.fixture
async def site():
    """A namespace that reaches only its veth peer address on the host; removed afterwards."""
    s = create_site()
    try:
        yield s
    finally:
        remove_site(s)
        assert not site_exists(s)


def service_pid(sh) -> int:
    db = str(sh.service_dir / "service.sqlite")
    pids = [p.pid for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and "cmsaf_hub" in p.info["cmdline"] and any(db in a for a in p.info["cmdline"])]
    assert len(pids) == 1, pids
    return pids[0]


def stop_outbound_worker(worker: subprocess.Popen) -> None:
    """SIGTERM: the wrapper stops its worker, does not restart it, and exits with the signal's status."""
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        raise AssertionError("the outbound worker's wrapper did not stop on SIGTERM") from None
    assert worker.returncode == 128 + signal.SIGTERM


async def poll(predicate, timeout: float, what: str):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def brokered_workers(client: Client) -> list[str]:
    return [a for a in client.scheduler_info()["workers"] if a.startswith("hubrev://")]


async def refusal(address: str, token: str) -> str:
    with pytest.raises(FatalCommClosedError) as e:
        await connect(address, timeout=10, **hub_connection_args(token))
    return str(e.value)


async def test_an_outbound_only_worker_is_a_full_member_and_survives_a_service_restart(
        hub_factory, tmp_path, site):
    # clusters run as the service's own OS user (no per-owner accounts in this test)
    sh = await start_service_hub(hub_factory, tmp_path, config="c.LocalBackend.same_user = True\n")
    alice = await sh.hub.create_user("alice")
    bob = await sh.hub.create_user("bob")
    hub_port = urlsplit(sh.hub.url).port
    forward = await PortForward(site.host_ip, "127.0.0.1", hub_port).start()
    worker = None
    try:
        async with sh.client(alice) as api:
            cid = (await api.post("clusters", json={"options": {"workers": 1}})).json()["id"]
            other = (await api.post("clusters", json={"options": {"workers": 0}})).json()["id"]
            model = await sh.wait_status(api, cid, "running")
            await sh.wait_workers(api, cid, 1)
            await sh.wait_status(api, other, "running")
            join = (await api.get(f"clusters/{cid}/worker-credential")).json()
            other_credential = (await api.get(f"clusters/{other}/worker-credential")).json()["credential"]

        # the site sees the hub at the forwarder's address only
        site_url = model["scheduler_address"].replace(f"127.0.0.1:{hub_port}", f"{site.host_ip}:{forward.port}")
        unreachable = subprocess.run(site.command(sys.executable, "-c", (
            "import socket,sys; s=socket.socket(); s.settimeout(3)\n"
            f"sys.exit(s.connect_ex(('127.0.0.1', {hub_port})) == 0)")), timeout=30)
        assert unreachable.returncode == 0  # the hub's own loopback port is not reachable from the site

        log = open(tmp_path / "outbound.log", "wb")
        cmd = site.command(*outbound_worker_command(site_url, "--name", "outbound-1", "--nthreads", "1",
                                                    "--no-dashboard", "--death-timeout", "60"))
        worker = subprocess.Popen(cmd, env={**os.environ, join["environment_variable"]: join["credential"]},
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        async with Client(model["scheduler_address"], security=hub_security(alice), asynchronous=True,
                          timeout=30) as client:
            await client.wait_for_workers(2, timeout=120)
            [outbound] = brokered_workers(client)
            assert outbound.startswith(hub_cluster_address(site_url) + "/workers/")
            [facility] = [a for a in client.scheduler_info()["workers"] if a != outbound]
            assert facility.startswith("tls://")  # the facility's worker still talks directly

            # results on the outbound worker reach the notebook: via the scheduler and directly
            # (stdlib functions: the scheduler cannot import this test module)
            x = client.submit(operator.mul, b"x", 3_000_000, workers=[outbound], pure=False)
            y = client.submit(operator.mul, b"y", 1_000_000, workers=[facility], pure=False)
            assert len(await x) == 3_000_000
            # directly too, before z below copies x to the facility worker (which the client cannot reach)
            assert (await client.gather(x, direct=True))[:1] == b"x"
            # the facility worker fetches x from the outbound one (a task depending on results held on each)
            z = client.submit(operator.add, x, y, workers=[facility], allow_other_workers=False)
            assert await z == b"x" * 3_000_000 + b"y" * 1_000_000
            assert await client.run(os.getpid, workers=[outbound]) and outbound in await client.get_worker_logs(
                workers=[outbound])

            # who may reach it: the owner; the cluster's own credential; nobody else
            for token in (alice, join["credential"]):
                comm = await connect(outbound, timeout=10, **hub_connection_args(token))
                try:
                    await comm.write({"op": "identity", "reply": True})
                    assert (await comm.read())["type"] == "Worker"
                finally:
                    await comm.close()
            assert ": 403 Forbidden (You may not use this cluster.)" in await refusal(outbound, bob)
            # another cluster's credential is no credential here (the relay's rule: 401, as for any unknown token)
            assert ": 401 " in await refusal(outbound, other_credential)
            # a fresh connection per refused upgrade: the server closes each after its answer, and a
            # pooled connection reused before its close is seen fails as "Server disconnected"
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as http:
                control = urlsplit(outbound).path.replace("/workers/", "/broker/")
                upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
                for token, status in ((other_credential, 403), (alice, 403), (None, 401)):
                    headers = {**upgrade, **({"Authorization": f"token {token}"} if token else {})}
                    r = await http.get(f"{sh.hub.url.rstrip('/')}{control}", headers=headers)
                    assert r.status_code == status, (token, r.text)

            # the service restarts: relayed connections drop, the worker comes back through the hub
            old = service_pid(sh)
            os.kill(old, signal.SIGKILL)

            async def new_outbound():
                try:  # asks the scheduler itself (the client's cached view lags its reconnection)
                    addresses = list((await client.scheduler.identity())["workers"])
                except OSError:
                    return None
                return [a for a in addresses if a.startswith("hubrev://") and a != outbound] or None

            [outbound2] = await poll(new_outbound, 180, "the outbound worker to rejoin")
            assert service_pid(sh) != old
            x2 = client.submit(operator.mul, b"x", 2_000_000, workers=[outbound2], pure=False)
            y2 = client.submit(operator.mul, b"y", 1_000, workers=[facility], pure=False)
            # directly while only the outbound worker holds x2 (the client cannot reach tls:// workers)
            assert (await asyncio.wait_for(client.gather(x2, direct=True), 120))[:1] == b"x"
            z2 = client.submit(operator.add, x2, y2, workers=[facility], allow_other_workers=False)
            assert await asyncio.wait_for(z2, 120) == b"x" * 2_000_000 + b"y" * 1_000
        assert join["credential"] not in (tmp_path / "outbound.log").read_text()
    finally:
        if worker is not None:
            stop_outbound_worker(worker)
        await forward.stop()


async def test_through_the_hubs_ingress_brokered_connections_leave_the_hubs_proxy_out(hub_factory, tmp_path, site):
    # the site reaches the hub's public address only: a real nginx in front of the hub on the
    # veth's host side, routing the broker's paths to its own listener on loopback (which the
    # site cannot reach) and everything else to the hub's proxy
    broker_listen = f"127.0.0.1:{free_port()}"
    ingress_port = free_port(site.host_ip)
    public = f"http://{site.host_ip}:{ingress_port}"
    sh = await start_service_hub(hub_factory, tmp_path, config=(
        "c.LocalBackend.same_user = True\n"
        f"c.Broker.listen = '{broker_listen}'\nc.Broker.public_url = '{public}'\n"))
    alice = await sh.hub.create_user("alice")
    bob = await sh.hub.create_user("bob")
    ingress = await start_ingress(tmp_path / "ingress", sh.hub.url, host=site.host_ip, port=ingress_port,
                                  broker=("services/cmsaf", broker_listen))
    proxy = psutil.Process(sh.hub.process.proxy_pid())
    worker = None
    try:
        async with sh.client(alice) as api:
            cid = (await api.post("clusters", json={"options": {"workers": 1}})).json()["id"]
            model = await sh.wait_status(api, cid, "running")
            await sh.wait_workers(api, cid, 1)
            join = (await api.get(f"clusters/{cid}/worker-credential")).json()
        assert join["broker_url"] == public

        hub_port = urlsplit(sh.hub.url).port
        site_url = model["scheduler_address"].replace(f"127.0.0.1:{hub_port}", f"{site.host_ip}:{ingress_port}")
        log = open(tmp_path / "outbound.log", "wb")
        cmd = site.command(*outbound_worker_command(site_url, "--name", "outbound-b", "--nthreads", "1",
                                                    "--no-dashboard", "--death-timeout", "60"))
        env = {**os.environ, join["environment_variable"]: join["credential"], BROKER_URL_ENV: join["broker_url"]}
        worker = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        async with Client(model["scheduler_address"], security=hub_security(alice), asynchronous=True,
                          timeout=30) as client:
            await client.wait_for_workers(2, timeout=120)
            [outbound] = brokered_workers(client)
            # its address is the hub's public one (the ingress), as its scheduler connection's
            assert outbound.startswith(hub_cluster_address(site_url) + "/workers/")
            [facility] = [a for a in client.scheduler_info()["workers"] if a != outbound]

            proxy_bytes = proxy.io_counters()
            x = client.submit(operator.mul, b"x", 20_000_000, workers=[outbound], pure=False)
            y = client.submit(operator.mul, b"y", 1_000, workers=[facility], pure=False)
            assert (await client.gather(x, direct=True))[:1] == b"x"  # the notebook, through the broker
            z = client.submit(operator.add, x, y, workers=[facility], allow_other_workers=False)
            # the facility worker fetched x from the outbound one (only the length comes back)
            assert await client.submit(len, z, workers=[facility]) == 20_001_000
            moved = proxy.io_counters()
            # 20 MB went from the outbound worker to the client and to the facility worker: none of
            # it through the hub's proxy (its socket I/O is counted as read/write chars)
            assert moved.read_chars - proxy_bytes.read_chars < 5_000_000, (proxy_bytes, moved)

            # the same rules at the listener: bob is refused, and it serves nothing else
            assert ": 403 Forbidden (You may not use this cluster.)" in await refusal(outbound, bob)
            async with httpx.AsyncClient(timeout=30) as http:
                r = await http.get(f"http://{broker_listen}/services/cmsaf/api/v1/clusters",
                                   headers={"Authorization": f"token {alice}"})
                assert r.status_code == 404
    finally:
        if worker is not None:
            stop_outbound_worker(worker)
        ingress.stop()
