"""The forwarder as the real cluster service mounts it: real hub + CHP + dev IAM + service + LocalBackend.

The links a user is given (``dashboard_link`` and ``scheduler_address`` of the cluster model) work
through the hub for the owner and an admin, nobody else gets in, and stopping the cluster removes
access.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys

import httpx
import pytest
from distributed import Client

from cmsaf_hub.comm import hub_security
from devstack.service_hubs import start_service_hub

pytestmark = pytest.mark.slow

UNAUTHENTICATED = "Authentication required: log in to the hub or send 'Authorization: token <hub token>'."


async def test_cluster_links_work_through_the_hub_for_owner_only(hub_factory, tmp_path):
    sh = await start_service_hub(hub_factory, tmp_path)
    alice = await sh.hub.create_user("alice")
    eve = await sh.hub.create_user("eve")
    root = await sh.hub.create_user("root", admin=True)
    async with sh.client(alice) as api:
        cid = (await api.post("clusters", json={"options": {"workers": 1}})).json()["id"]
        model = await sh.wait_status(api, cid, "running")
        await sh.wait_workers(api, cid, 1)

        dashboard = model["dashboard_link"]
        assert dashboard.startswith(sh.hub.url.rstrip("/") + f"/services/cmsaf/clusters/{cid}/dashboard/")
        async with httpx.AsyncClient(timeout=60) as http:
            for token in (alice, root):
                page = await http.get(dashboard, headers={"Authorization": f"token {token}"})
                assert page.status_code == 200 and "bokeh" in page.text.lower()
            assert re.search(rf'/services/cmsaf/clusters/{cid}/dashboard/static/js/bokeh[^"]*\.js', page.text)
            denied = await http.get(dashboard, headers={"Authorization": f"token {eve}"})
            unknown = await http.get(dashboard.replace(cid, "0000unknown"), headers={"Authorization": f"token {eve}"})
            assert denied.status_code == unknown.status_code == 403 and denied.text == unknown.text

        address = model["scheduler_address"]
        assert address.startswith("ws://") and address.endswith(f"/clusters/{cid}/comm")
        async with Client(address, security=hub_security(alice), asynchronous=True, timeout=30) as client:
            assert await client.submit(sum, [20, 22]) == 42
        assert await sh.comm_answer(cid, alice) == (101, "")
        assert await sh.comm_answer(cid, eve) == (403, "You may not use this cluster.")

        assert (await api.delete(f"clusters/{cid}")).status_code == 200
        await sh.wait_status(api, cid, "stopped")
        async with httpx.AsyncClient(timeout=60) as http:
            gone = await http.get(dashboard, headers={"Authorization": f"token {alice}"})
            assert gone.status_code == 404


async def test_an_outbound_only_worker_joins_the_real_service_cluster_with_the_owners_credential(
        hub_factory, tmp_path):
    sh = await start_service_hub(hub_factory, tmp_path)
    alice = await sh.hub.create_user("alice")
    bob = await sh.hub.create_user("bob")
    root = await sh.hub.create_user("root", admin=True)
    async with sh.client(alice) as api:
        cid = (await api.post("clusters", json={"options": {"workers": 0}})).json()["id"]
        model = await sh.wait_status(api, cid, "running")
        r = await api.get(f"clusters/{cid}/worker-credential")
        assert r.status_code == 200
        join = r.json()
    # nobody else learns it, not even an admin, and a foreign cluster looks like an unknown one
    for token in (bob, root):
        async with sh.client(token) as other:
            assert (await other.get(f"clusters/{cid}/worker-credential")).status_code == 404
    assert join["scheduler_address"] == model["scheduler_address"]
    assert join["credential"] not in " ".join(join["command"])

    cmd = [sys.executable, *join["command"][1:], "--nthreads", "1", "--no-dashboard", "--name", "outbound-1"]
    log = tmp_path / "outbound-worker.log"
    worker = subprocess.Popen(cmd, env={**os.environ, join["environment_variable"]: join["credential"]},
                              stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        async with Client(model["scheduler_address"], security=hub_security(alice), asynchronous=True,
                          timeout=30) as client:
            await client.wait_for_workers(1, timeout=90)
            names = [w["name"] for w in client.scheduler_info()["workers"].values()]
            assert names == ["outbound-1"]
            # the command makes a brokered worker: its address means "through the service", and
            # its result comes back to the notebook (the scheduler fetches it through the broker)
            [address] = client.scheduler_info()["workers"]
            assert address.startswith("hubrev://"), address
            future = client.submit(pow, 3, 4, workers=["outbound-1"])
            assert await asyncio.wait_for(future, 60) == 81
        assert join["credential"] not in log.read_text()
        # the credential opens this cluster, a wrong one nothing, and it is no hub token
        assert await sh.comm_answer(cid, join["credential"]) == (101, "")
        assert await sh.comm_answer(cid, join["credential"][::-1]) == (401, UNAUTHENTICATED)
        async with sh.client(join["credential"]) as as_token:
            r = await as_token.get("clusters")
            assert r.status_code == 403 and "authentication required" in r.json()["error"], r.text
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
