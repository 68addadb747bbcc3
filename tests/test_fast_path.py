"""The fast path against the real service: Dask's TLS comm through the hub's one URL.

A real hub (configurable-http-proxy), the cluster service with its local backend (a TLS-only
scheduler and a worker), and for the TLS-terminating ingress a real nginx in front of the hub
with the dev CA's certificate. The client is ``distributed.Client`` on ``hub(s)://`` addresses.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest
from distributed import Client
from distributed.comm.core import FatalCommClosedError

from cmsaf_hub.comm import HubRefusedFatal, hub_security
from devstack.ingress import start_ingress
from devstack.pki import trust
from tests.service_helpers import service_hub_factory  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

#: Clusters as the service's own OS user: these tests are about the path into a cluster, not isolation.
SAME_USER = "c.LocalBackend.same_user = True\n"


async def roundtrip(client: Client, nbytes: int) -> None:
    """A computation and a scatter/gather of ``nbytes`` random bytes, checked byte for byte."""
    assert await client.submit(sum, [20, 22]) == 42
    payload = os.urandom(nbytes)
    [future] = await client.scatter([payload])
    assert await client.gather(future) == payload


def scheduler_tls(client: Client) -> dict:
    """What the client's own comm to the scheduler negotiated (TLS details distributed records)."""
    return client.scheduler_comm.comm.extra_info


async def test_fast_path_through_chp_and_an_nginx_tls_ingress(service_hub_factory, dev_pki, tmp_path):
    sh = await service_hub_factory(config=SAME_USER)
    alice = await sh.hub.create_user("alice")
    eve = await sh.hub.create_user("eve")
    root = await sh.hub.create_user("root")  # admin by config
    hub_port = int(sh.hub.url.rstrip("/").rsplit(":", 1)[1])
    async with sh.client(alice) as api:
        cid = (await api.post("clusters", json={"options": {"workers": 1}})).json()["id"]
        model = await sh.wait_status(api, cid, "running")
        await sh.wait_workers(api, cid, 1)
    fast = model["fast_scheduler_address"]
    assert fast == f"hub://127.0.0.1:{hub_port}/services/cmsaf/clusters/{cid}/tls"

    # owner and admin: TLS with the scheduler itself (its certificate), bytes intact through CHP
    for token in (alice, root):
        async with Client(fast, security=hub_security(token), asynchronous=True, timeout=30) as client:
            await roundtrip(client, 20_000_000)
            info = scheduler_tls(client)
            assert info["cipher"][1].startswith("TLSv1.")
            assert dict(x[0] for x in info["peercert"]["subject"])["commonName"] == f"dask-{cid}"
    # the websocket relay keeps working for plain distributed (positive control of the same cluster)
    async with Client(model["scheduler_address"], security=hub_security(alice), asynchronous=True, timeout=30) as c:
        assert await c.submit(sum, [1, 2]) == 3

    # anyone else: the exact refusal, at once (no retries until the timeout)
    with pytest.raises(HubRefusedFatal, match=r"403 You may not use this cluster\."):
        await Client(fast, security=hub_security(eve), asynchronous=True, timeout=20)
    with pytest.raises(FatalCommClosedError, match="needs a hub token"):
        await Client(fast, asynchronous=True, timeout=20)
    # the cluster's key goes to owner and admin only, to a token only, and is never cached
    tls_url = f"{sh.hub.url}services/cmsaf/clusters/{cid}/tls"
    async with httpx.AsyncClient(timeout=30) as http:
        mine = await http.get(tls_url, headers={"Authorization": f"token {alice}"})
        assert mine.status_code == 200 and mine.headers["Cache-Control"] == "no-store"
        assert "BEGIN CERTIFICATE" in mine.json()["tls_cert"] and "PRIVATE KEY" in mine.json()["tls_key"]
        theirs = await http.get(tls_url, headers={"Authorization": f"token {eve}"})
        unknown = await http.get(tls_url.replace(cid, "0000unknown"), headers={"Authorization": f"token {eve}"})
        assert theirs.status_code == unknown.status_code == 403 and theirs.text == unknown.text
        assert (await http.get(tls_url)).status_code == 401

    # behind an nginx ingress terminating TLS with the hub's certificate: hubs://, TLS inside TLS
    nginx = await start_ingress(tmp_path / "nginx", sh.hub.url, tls=(dev_pki.server_cert, dev_pki.server_key))
    try:
        ingress = f"hubs://127.0.0.1:{nginx.port}/services/cmsaf/clusters/{cid}/tls"
        hub_ca = trust(dev_pki.ca_cert)
        async with Client(ingress, security=hub_security(alice, ssl_context=hub_ca), asynchronous=True,
                          timeout=30) as client:
            await roundtrip(client, 20_000_000)
            assert dict(x[0] for x in scheduler_tls(client)["peercert"]["subject"])["commonName"] == f"dask-{cid}"
        with pytest.raises(HubRefusedFatal, match=r"403 You may not use this cluster\."):
            await Client(ingress, security=hub_security(eve, ssl_context=hub_ca), asynchronous=True, timeout=20)
    finally:
        nginx.stop()

    # stopping the cluster closes the fast path too
    async with sh.client(alice) as api:
        assert (await api.delete(f"clusters/{cid}")).status_code == 200
        await sh.wait_status(api, cid, "stopped")
    with pytest.raises(HubRefusedFatal, match=r"404 This cluster has stopped\."):
        await Client(fast, security=hub_security(alice), asynchronous=True, timeout=20)


PASTED_CLIENT_CODE = """
from dask.distributed import Client

client = Client("{address}")
print(client.submit(sum, [40, 2]).result(), client.scheduler_comm.comm.extra_info["cipher"][1][:5])
"""


async def test_hubcluster_sidebar_cli_and_pasted_addresses_take_the_fast_path(service_hub_factory):
    from cmsaf_hub.client import Hub, HubCluster
    from cmsaf_hub.client.labextension import make_hub_cluster_model
    from cmsaf_hub.client.report import ClusterReport

    sh = await service_hub_factory(config=SAME_USER)
    token = await sh.hub.create_user("alice")
    hub_port = int(sh.hub.url.rstrip("/").rsplit(":", 1)[1])
    async with Hub(sh.hub.url, token=token, asynchronous=True) as hub:
        cluster = await HubCluster(hub=hub, asynchronous=True, workers=1, cores=1, memory=1.0)
        fast = f"hub://127.0.0.1:{hub_port}/services/cmsaf/clusters/{cluster.cluster_id}/tls"
        assert cluster.scheduler_address == fast
        async with cluster.get_client() as client:
            await roundtrip(client, 5_000_000)
            assert scheduler_tls(client)["cipher"][1].startswith("TLSv1.")  # Dask's TLS comm, not ws
        # what the sidebar shows and pastes, and what the CLI prints, is the same address
        report = await hub.get_cluster(cluster.cluster_id)
        assert isinstance(report, ClusterReport)
        assert report.scheduler_address == fast
        assert make_hub_cluster_model("lab-1", report)["scheduler_address"] == fast
        # the pasted code, with a session's environment and no security argument
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CMSAF_", "JUPYTERHUB_", "DASK_"))}
        env.update(CMSAF_SERVICE_URL=f"{sh.hub.url}services/cmsaf/", JUPYTERHUB_API_TOKEN=token,
                   DASK_DISTRIBUTED__CLIENT__SECURITY_LOADER="cmsaf_hub.client.security.security_loader")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PASTED_CLIENT_CODE.format(address=fast), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert (proc.returncode, out.decode()) == (0, "42 TLSv1\n"), err.decode()[-2000:]
        await cluster.close()


async def test_an_outbound_worker_joins_over_the_fast_path_with_the_worker_credential(service_hub_factory, tmp_path):
    from distributed import wait

    from cmsaf_hub.comm import CREDENTIAL_ENV, hub_worker_command

    sh = await service_hub_factory(config=SAME_USER)
    alice = await sh.hub.create_user("alice")
    async with sh.client(alice) as api:
        cid = (await api.post("clusters", json={"options": {"workers": 0}})).json()["id"]
        model = await sh.wait_status(api, cid, "running")
        credential = (await api.get(f"clusters/{cid}/worker-credential")).json()["credential"]
    fast = model["fast_scheduler_address"]
    cmd = hub_worker_command(fast, "--nthreads", "1", "--no-dashboard", "--name", "fast-1")
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(cmd, env={**os.environ, CREDENTIAL_ENV: credential},
                              stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        async with Client(fast, security=hub_security(alice), asynchronous=True, timeout=30) as client:
            await client.wait_for_workers(1, timeout=90)
            assert [w["name"] for w in client.scheduler_info()["workers"].values()] == ["fast-1"]
            # the task reaches the worker, and its completion comes back, over its fast-path connection
            future = client.submit(pow, 3, 4, workers=["fast-1"])
            await asyncio.wait_for(wait(future), 60)
            assert future.status == "finished"
        assert credential not in log.read_text()
        # a credential that is not this cluster's is no hub token either
        with pytest.raises(HubRefusedFatal, match="401 Authentication required"):
            await Client(fast, security=hub_security(credential[::-1]), asynchronous=True, timeout=20)
    finally:
        worker.terminate()
        worker.wait(30)
