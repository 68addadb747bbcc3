"""The real ``dask-gateway`` client package (from PyPI) against this service under a real hub.

Every call a notebook written for a dask-gateway facility makes, from outside (explicit address,
``JupyterHubAuth``) and from a session's environment (``Gateway()`` with no arguments, configured
by the spawner's ``session_env``), plus another user's cluster refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import textwrap

import httpx
import pytest
from dask_gateway import Gateway, GatewayCluster, JupyterHubAuth
from distributed import Client

from cmsaf_hub.service.crypto import generate_cluster_tls
from devstack.hub import free_port
from spawners.tokens import SessionSettings, session_env
from tests.service_helpers import service_hub_factory  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

SAME_USER = "c.LocalBackend.same_user = True\n"

SESSION_NOTEBOOK = textwrap.dedent("""
    import json
    from dask_gateway import Gateway

    gateway = Gateway()
    options = gateway.cluster_options()
    options.workers = 1
    cluster = gateway.new_cluster(options)
    client = cluster.get_client()
    client.wait_for_workers(1, timeout=120)
    answer = client.submit(lambda x: x + 1, 41).result()
    listed = [c.name for c in gateway.list_clusters()]
    link = cluster.dashboard_link
    name = cluster.name
    client.close()
    cluster.shutdown()
    print(json.dumps({"answer": answer, "listed": listed, "name": name, "link": link,
                      "fields": sorted(options), "after": [c.name for c in gateway.list_clusters()]}))
""")


async def test_dask_gateway_client_from_outside_and_from_a_session(service_hub_factory, tmp_path):
    proxy_port = free_port()
    sh = await service_hub_factory(config=SAME_USER + f"c.DaskGateway.proxy_listen = '127.0.0.1:{proxy_port}'\n")
    alice = await sh.hub.create_user("alice")
    eve = await sh.hub.create_user("eve")
    service = f"{sh.hub.url}services/cmsaf"
    where = {"address": f"{service}/gateway", "proxy_address": f"gateway://127.0.0.1:{proxy_port}",
             "public_address": service}

    async with Gateway(**where, auth=JupyterHubAuth(api_token=alice), asynchronous=True) as gateway:
        versions = await gateway.get_versions()
        assert versions["server"] == {"version": "0.1.0"}
        options = await gateway.cluster_options()
        assert {"workers", "cores", "memory"} <= set(options) and options.workers == 0
        options.workers = 1
        cluster: GatewayCluster = await gateway.new_cluster(options, shutdown_on_close=False)
        name = cluster.name
        assert [c.name for c in await gateway.list_clusters()] == [name]
        assert [c.status.name for c in await gateway.list_clusters(status="running")] == ["RUNNING"]
        assert await gateway.list_clusters(status=["pending", "stopped"]) == []

        # the scheduler through the SNI passthrough, TLS with the cluster's own certificate
        async with cluster.get_client(set_as_default=False) as client:
            await client.wait_for_workers(1, timeout=120)
            assert await asyncio.wait_for(client.submit(sum, [20, 22]), 60) == 42
        # the dashboard opens through the hub, for the owner
        assert cluster.dashboard_link == f"{service}/clusters/{name}/dashboard/status"
        async with httpx.AsyncClient(timeout=60) as http:
            page = await http.get(cluster.dashboard_link, headers={"Authorization": f"token {alice}"})
            assert page.status_code == 200 and "bokeh" in page.text.lower()

        # scale and adapt are the service's own (its model shows them)
        await cluster.scale(2)
        async with sh.client(alice) as api:
            await sh.wait_workers(api, name, 2)
            await cluster.adapt(minimum=1, maximum=3)
            assert (await api.get(f"clusters/{name}")).json()["adapt"] == {"minimum": 1, "maximum": 3}
            await cluster.adapt(active=False)
            assert (await api.get(f"clusters/{name}")).json()["adapt"] is None
        await cluster.close()

        # another user: the name is refused exactly as an unknown one is (404, dask-gateway's ValueError)
        async with Gateway(**where, auth=JupyterHubAuth(api_token=eve), asynchronous=True) as theirs:
            with pytest.raises(ValueError, match=f"Cluster {name} not found"):
                await theirs.connect(name)
            with pytest.raises(ValueError, match=f"Cluster {name} not found"):
                await theirs.stop_cluster(name)
            assert await theirs.list_clusters() == []
        async with httpx.AsyncClient(base_url=f"{service}/gateway/api/v1/", timeout=30) as http:
            anonymous = await http.get(f"clusters/{name}")  # a 401 is what makes the client authenticate
            assert (anonymous.status_code, anonymous.headers.get("WWW-Authenticate")) == (401, "jupyterhub")
            forged = await http.get(f"clusters/{name}", headers={"Authorization": "jupyterhub not-a-token"})
            assert (forged.status_code, forged.json()) == (  # a credential was sent: refused, not asked for again
                403, {"error": "authentication required: send 'Authorization: token <hub API token>'"})
            mine = await http.get(f"clusters/{name}", headers={"Authorization": f"jupyterhub {alice}"})
            theirs_r = await http.get(f"clusters/{name}", headers={"Authorization": f"jupyterhub {eve}"})
            unknown = await http.get("clusters/0000unknown", headers={"Authorization": f"jupyterhub {eve}"})
            assert mine.status_code == 200 and mine.json()["status"] == "RUNNING"
            assert theirs_r.status_code == unknown.status_code == 404
            bad = await http.get("clusters/", params={"status": "BOGUS"}, headers={"Authorization": f"jupyterhub {alice}"})
            assert bad.status_code == 422 and bad.json() == {"error": "'BOGUS' is not a valid ClusterStatus"}
        # at the proxy, any key but the cluster's own fails the handshake with its scheduler
        await assert_foreign_key_refused(proxy_port, name, mine.json())

        # connect again by name, then stop by name
        again = await gateway.connect(name)
        async with again.get_client(set_as_default=False) as client:
            assert await asyncio.wait_for(client.submit(pow, 2, 10), 60) == 1024
        await again.close()
        await gateway.stop_cluster(name)
        async with sh.client(alice) as api:
            await sh.wait_status(api, name, "stopped")
        assert [c.name for c in await gateway.list_clusters(status="stopped")] == [name]
        assert await gateway.list_clusters() == []

    # a notebook in a session: Gateway() with no arguments, from the spawner's environment
    settings = SessionSettings(token_dir=str(tmp_path), service_url=f"{service}/",
                               dask_gateway_proxy_address=f"127.0.0.1:{proxy_port}")
    env = {**os.environ, **session_env(settings, []), "JUPYTERHUB_API_TOKEN": alice}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SESSION_NOTEBOOK, env=env,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode == 0, err.decode()[-3000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["answer"] == 42 and result["listed"] == [result["name"]] and result["after"] == []
    assert result["link"] == f"{service}/clusters/{result['name']}/dashboard/status"
    assert {"workers", "cores", "memory"} <= set(result["fields"])
    async with sh.client(alice) as api:
        assert (await api.get(f"clusters/{result['name']}")).json()["status"] in ("stopping", "stopped")


async def assert_foreign_key_refused(proxy_port: int, name: str, report: dict) -> None:
    """A client holding another cluster's key, routed to ``name``: the scheduler rejects it; the
    cluster's own key (the positive control) gets in."""
    from dask_gateway.client import GatewaySecurity

    foreign = generate_cluster_tls("someone-else")
    address = f"gateway://127.0.0.1:{proxy_port}/{name}"
    with pytest.raises((OSError, ssl.SSLError)):
        await Client(address, security=GatewaySecurity(tls_key=foreign.key, tls_cert=foreign.cert),
                     asynchronous=True, timeout=10)
    own = GatewaySecurity(tls_key=report["tls_key"], tls_cert=report["tls_cert"])
    async with Client(address, security=own, asynchronous=True, timeout=30) as client:
        assert await asyncio.wait_for(client.submit(sum, [1, 1]), 60) == 2
    # the right key but a name with no running cluster behind it: closed before any scheduler
    with pytest.raises(OSError):
        await Client(f"gateway://127.0.0.1:{proxy_port}/0000unknown", security=own, asynchronous=True, timeout=10)
