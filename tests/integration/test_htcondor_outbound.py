"""A worker job at an outbound-only site, on a real pool, joins its cluster through a real hub.

The cluster lives in the cluster service under a real JupyterHub (local backend: its scheduler
runs beside the service). The HTCondor backend submits the worker the way it does for a site in
``outbound_sites``: ``python -m cmsaf_hub.reverse`` against the hub's scheduler relay, the cluster's
worker credential as a sandbox file. The worker really starts in the job: it registers through the
hub with a ``hubrev://`` address, and the notebook-side client (the owner's hub token) runs tasks
on it and fetches their results from it through the broker.
"""

from __future__ import annotations

import asyncio
import os
import sys
from urllib.parse import urlsplit

import cloudpickle
import pytest
from distributed import Client

from cmsaf_hub.comm import hub_security
from cmsaf_hub.service.backends.base import WorkerPhase
from devstack.service_hubs import start_service_hub
from tests.integration.test_htcondor_pool import harness, track, wait_phase  # noqa: F401

pytestmark = [pytest.mark.htcondor, pytest.mark.slow]

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # job processes cannot import this module


def where_am_i() -> dict:
    """Runs on the worker: whether it is the HTCondor job (its scratch directory) and as whom."""
    import getpass

    return {"scratch": os.environ.get("_CONDOR_SCRATCH_DIR", ""), "user": getpass.getuser()}


async def test_an_outbound_only_worker_job_joins_through_the_hub_and_its_results_come_back(harness, hub_factory,
                                                                                             tmp_path):
    sh = await start_service_hub(hub_factory, tmp_path)
    token = await sh.hub.create_user("alice")
    async with sh.client(token) as api:
        cid = (await api.post("clusters", json={"options": {"workers": 0}})).json()["id"]
        model = await sh.wait_status(api, cid, "running")
        join = (await api.get(f"clusters/{cid}/worker-credential")).json()
    try:
        backend = await harness.backend(outbound_sites=["T2_TEST"], hub_url=sh.hub.url)
        spec = await harness.cluster("alice", cid, site="T2_TEST")
        spec.env[join["environment_variable"]] = join["credential"]  # what the service's env hook adds
        spec.dashboard_prefix = f"/services/cmsaf/clusters/{cid}/dashboard"
        spec.backend_state = {"schedd": backend.schedd_name, "scheduler_address": model["scheduler_address"]}
        [worker] = await backend.submit_workers(spec, 1)
        track(spec, [worker])
        await wait_phase(backend, spec, WorkerPhase.RUNNING)
        async with Client(model["scheduler_address"], security=hub_security(token), asynchronous=True,
                          timeout=60) as client:
            await client.wait_for_workers(1, timeout=180)
            [(address, info)] = client.scheduler_info()["workers"].items()
            assert info["name"] == worker.name
            hub = urlsplit(sh.hub.url).netloc
            assert address.startswith(f"hubrev://{hub}/services/cmsaf/clusters/{cid}/workers/"), address
            [placed] = (await client.run(where_am_i)).values()  # the client reaches the worker itself
            assert placed["user"] == "alice" and placed["scratch"], placed
            future = client.submit(os.urandom, 2**20, workers=[address], pure=False)
            result = await asyncio.wait_for(client.gather(future, direct=True), 120)  # from the worker, brokered
            assert len(result) == 2**20
    finally:
        async with sh.client(token) as api:  # clusters outlive the service: stop this one
            await api.delete(f"clusters/{cid}")
            await sh.wait_status(api, cid, "stopped")
