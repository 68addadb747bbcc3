"""The forwarder as the real cluster service mounts it: real hub + CHP + dev IAM + service + LocalBackend.

The links a user is given (``dashboard_link`` and ``scheduler_address`` of the cluster model) work
through the hub for the owner and an admin, nobody else gets in, and stopping the cluster removes
access.
"""

from __future__ import annotations

import re

import httpx
import pytest
from distributed import Client

from cmsaf_hub.comm import hub_security
from tests.service_helpers import start_service_hub

pytestmark = pytest.mark.slow


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
        with pytest.raises(OSError):
            await Client(address, security=hub_security(eve), asynchronous=True, timeout=3)

        assert (await api.delete(f"clusters/{cid}")).status_code == 200
        await sh.wait_status(api, cid, "stopped")
        async with httpx.AsyncClient(timeout=60) as http:
            gone = await http.get(dashboard, headers={"Authorization": f"token {alice}"})
            assert gone.status_code == 404
