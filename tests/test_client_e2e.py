"""The client, the CLI and the Dask sidebar's manager against a real hub, service and local backend."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from cmsaf_hub.client import Hub, HubCluster, OptionsError
from cmsaf_hub.client.config import resolve_config
from cmsaf_hub.client.labextension import HubClusterManager, lab_id_for
from devstack.service_hubs import start_service_hub
from tests.test_labextension import JupyterServer

pytestmark = pytest.mark.slow

RECONNECT_SCRIPT = """
import sys
from cmsaf_hub.client import HubCluster
with HubCluster.from_id(sys.argv[1]) as cluster:
    with cluster.get_client() as client:
        print(client.submit(lambda: 6 * 7).result(), len(client.scheduler_info()["workers"]))
"""

#: What dask-labextension's "inject client code" pastes, run with a session's environment.
PASTED_CLIENT_CODE = """
from dask.distributed import Client

client = Client("{address}")
print(client.submit(sum, [40, 2]).result())
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any session or laptop client settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMSAF_", "JUPYTERHUB_", "DASK_"))}
    return {**env, **extra}


async def run(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def test_create_compute_scale_reconnect_from_a_new_process_close(hub_factory, tmp_path):
    sh = await start_service_hub(hub_factory, tmp_path)
    token = await sh.hub.create_user("alice")
    async with Hub(sh.hub.url, token=token, asynchronous=True) as hub:
        with pytest.raises(OptionsError, match="invalid value 99 for option 'cores': must be an integer from 1 to 8"):
            await hub.submit(cores=99)

        cluster = await HubCluster(hub=hub, asynchronous=True, workers=1, cores=1, memory=1.0)
        cid = cluster.cluster_id
        assert cluster.dashboard_link == f"{sh.hub.url}services/cmsaf/clusters/{cid}/dashboard/status"
        async with cluster.get_client() as client:
            assert await client.submit(lambda x: x * 2, 21) == 42
            await cluster.scale(2)
            await client.wait_for_workers(2, timeout=90)
            assert sum(await asyncio.gather(*[client.submit(lambda i: i, i) for i in range(10)])) == 45

        code, out, err = await run(
            sys.executable, "-c", RECONNECT_SCRIPT, cid,
            env=clean_env(CMSAF_HUB_URL=sh.hub.url, CMSAF_TOKEN=token),
        )
        assert (code, out.split()) == (0, ["42", "2"]), err[-2000:]
        assert (await hub.get_cluster(cid)).status == "running"  # from_id left it running

        # inside a session (zero configuration), the sidebar's pasted client code works as is
        session_env = clean_env(
            CMSAF_SERVICE_URL=f"{sh.hub.url}services/cmsaf/",
            JUPYTERHUB_API_TOKEN=token,
            DASK_DISTRIBUTED__CLIENT__SECURITY_LOADER="cmsaf_hub.client.security.security_loader",
        )
        code, out, err = await run(
            sys.executable, "-c", PASTED_CLIENT_CODE.format(address=cluster.scheduler_address), env=session_env
        )
        assert (code, out) == (0, "42\n"), err[-2000:]

        html = cluster._repr_html_()
        assert cid in html and "running" in html and token not in html
        await cluster.close()  # shutdown_on_close: created here
        assert (await hub.get_cluster(cid)).status in ("stopping", "stopped")

        # a handle from from_id: close() only disconnects, shutdown() stops the cluster (as dask-gateway's)
        other = await HubCluster(hub=hub, asynchronous=True, workers=0, cores=1, memory=1.0)
        reconnected = await HubCluster.from_id(other.cluster_id, hub=hub, asynchronous=True)
        await reconnected.close()
        assert (await hub.get_cluster(other.cluster_id)).status == "running"
        reconnected = await HubCluster.from_id(other.cluster_id, hub=hub, asynchronous=True)
        await reconnected.shutdown()
        assert (await hub.get_cluster(other.cluster_id)).status in ("stopping", "stopped")
        await other.close()  # the first handle of a cluster already stopping closes quietly


async def test_cli_round_trip_and_the_sidebar_manager(hub_factory, tmp_path):
    sh = await start_service_hub(hub_factory, tmp_path)
    token = await sh.hub.create_user("bob")
    token_file = tmp_path / "token"
    token_file.write_text(token)
    env = clean_env(CMSAF_HUB_URL=sh.hub.url)

    async def cli(*args: str) -> tuple[int, str, str]:
        return await run(sys.executable, "-m", "cmsaf_hub.client.cli", "--token-file", str(token_file), *args, env=env)

    code, out, err = await cli("--json", "create", "--workers", "1", "--memory", "1", "--wait")
    assert code == 0, err
    created = json.loads(out)
    cid = created["id"]
    assert created["status"] == "running" and created["options"]["workers"] == 1

    code, out, _ = await cli("--json", "list")
    assert code == 0 and [c["id"] for c in json.loads(out)] == [cid]

    # a session's Jupyter server: the sidebar lists the CLI's cluster and opens its dashboard
    jupyter = JupyterServer(tmp_path / "lab", f"{sh.hub.url}services/cmsaf/", token)
    try:
        listed = await asyncio.to_thread(jupyter.wait_for_clusters, 1)
        assert [c["id"] for c in listed] == [lab_id_for(cid)]
        status, body = await asyncio.to_thread(
            jupyter.get, f"dask/dashboard/{lab_id_for(cid)}/individual-plots.json"
        )
        assert status == 200, body[:500]
        plots = json.loads(body)
        status, body = await asyncio.to_thread(
            jupyter.get, f"dask/dashboard/{lab_id_for(cid)}{plots['Individual Task Stream']}"
        )
        assert status == 200 and b"bokeh" in body, body[:500]
        # the plot's own resources load through this proxy (the browser has no cookie for the service)
        assert f'src="/dask/dashboard/{lab_id_for(cid)}/static/'.encode() in body
        assert f"/services/cmsaf/clusters/{cid}/dashboard/".encode() not in body
    finally:
        jupyter.stop()
    code, out, _ = await cli("dashboard", cid)
    assert (code, out) == (0, f"{sh.hub.url}services/cmsaf/clusters/{cid}/dashboard/status\n")
    code, out, _ = await cli("--json", "scale", cid, "2")
    assert code == 0 and json.loads(out)["workers"]["requested"] == 2
    code, out, _ = await cli("--json", "adapt", cid, "--minimum", "1", "--maximum", "2")
    assert code == 0 and json.loads(out)["adapt"] == {"minimum": 1, "maximum": 2}
    code, out, err = await cli("logs", cid)
    assert code == 0 and out.strip(), err

    # error exit codes, one line each
    assert await cli("create", "--cores", "99") == (
        2, "", "cmsaf-dask: invalid value 99 for option 'cores': must be an integer from 1 to 8\n"
    )
    assert await cli("scale", "0" * 32, "1") == (6, "", f"cmsaf-dask: no cluster '{'0' * 32}'\n")
    code, _, err = await run(
        sys.executable, "-m", "cmsaf_hub.client.cli", "list", env={**env, "CMSAF_TOKEN": "not-a-token"}
    )
    assert code == 4 and err.count("\n") == 1 and "not-a-token" not in err, err
    code, _, err = await run(sys.executable, "-m", "cmsaf_hub.client.cli", "list", env=clean_env())
    assert code == 3 and err.startswith("cmsaf-dask: no cluster service configured")

    # the Dask sidebar's manager: sees the CLI's cluster, creates one with the defaults, stops it
    manager = HubClusterManager(hub_config=resolve_config(hub_url=sh.hub.url, token=token, env={}))
    try:
        await manager.refresh()
        assert [m["name"] for m in manager.list_clusters()] == [f"HubCluster {cid}"]
        model = await manager.start_cluster()
        await manager.refresh()
        assert {m["id"] for m in manager.list_clusters()} == {lab_id_for(cid), model["id"]}
        assert (await manager.scale_cluster(model["id"], 1))["id"] == model["id"]
        assert await manager.close_cluster(model["id"]) is not None
        await manager.refresh()
        assert [m["id"] for m in manager.list_clusters()] == [lab_id_for(cid)]
    finally:
        await manager.close()

    code, out, _ = await cli("--json", "delete", cid)
    assert code == 0 and json.loads(out) == {"deleted": [cid]}
    # a stopping cluster hands out no dashboard any more, even before the reconciler finished it
    code, _, err = await cli("dashboard", cid)
    assert code == 1 and "no dashboard" in err
