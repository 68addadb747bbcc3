"""The cluster's worker credential reaches HTCondor jobs as a sandbox file only, on a real pool.

Schedulers and in-pool workers present it to reach brokered (``hubrev://``) workers; workers at
outbound-only sites register with it (docs/outbound-workers.md). Each job must hold it as a 0600
file of its owner in its sandbox, named by ``CMSAF_WORKER_CREDENTIAL_FILE``, and no job ad may
carry it (every pool user can read ads).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import sys
import time

import cloudpickle
import pytest
from distributed import Client

from cmsaf_hub.comm import CREDENTIAL_ENV
from cmsaf_hub.service.backends.base import WorkerPhase
from cmsaf_hub.service.backends.condor_jobs import WORKER_CREDENTIAL_FILE
from cmsaf_hub.service.backends.condor_retire import cluster_security
from cmsaf_hub.service.backends.condor_seam import SERVICE_IDENTITY
from tests.integration.test_htcondor_pool import PHASE_TIMEOUT, harness, queue, start, track, wait_phase  # noqa: F401

pytestmark = [pytest.mark.htcondor, pytest.mark.slow]

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # job processes cannot import this module


def credential_in_this_process() -> dict:
    """Runs in the scheduler job and in a worker job: what this process holds of the credential."""
    import pwd
    import stat

    from cmsaf_hub.comm import read_worker_credential  # what hubrev:// connects present

    path = os.environ["CMSAF_WORKER_CREDENTIAL_FILE"]
    info = os.stat(path)
    return {"in_sandbox": os.path.dirname(path) == os.environ["_CONDOR_SCRATCH_DIR"],
            "name": os.path.basename(path), "mode": stat.S_IMODE(info.st_mode),
            "owner": pwd.getpwuid(info.st_uid).pw_name, "value": read_worker_credential(),
            "in_environment": "CMSAF_WORKER_CREDENTIAL" in os.environ}


def no_ad_carries(ads: list[dict], secret: str) -> bool:
    return bool(ads) and not [ad for ad in ads if secret in repr(ad)]


async def test_a_scheduler_job_and_an_in_pool_worker_hold_the_credential_as_their_owners_0600_file(harness):
    backend = await harness.backend(scheduler_placement="htcondor")
    spec = await harness.cluster("bob", "it-credential", site="T2_TEST")
    credential = secrets.token_urlsafe(32)
    spec.env[CREDENTIAL_ENV] = credential  # as the service's reconciler hands it over
    info = await start(backend, spec)
    track(spec, await backend.submit_workers(await harness.fresh(spec), 1))
    await wait_phase(backend, spec, WorkerPhase.RUNNING)
    async with Client(info.address, security=cluster_security(spec.tls), asynchronous=True) as client:
        await client.wait_for_workers(1)
        [on_worker] = (await client.run(credential_in_this_process)).values()
        on_scheduler = await client.run_on_scheduler(credential_in_this_process)
    expected = {"in_sandbox": True, "name": WORKER_CREDENTIAL_FILE, "mode": 0o600, "owner": "bob",
                "value": credential, "in_environment": False}
    assert on_scheduler == expected
    assert on_worker == expected
    ads = await queue(backend, 'CmsafCluster == "it-credential"', [])  # every attribute of every job
    assert {ad["CmsafRole"] for ad in ads} == {"scheduler", "worker", "inputs"}
    assert no_ad_carries(ads, credential)


#: Stands in for the job's Python at an outbound-only site: reports what the worker would start with.
REPORTER = """#!/bin/sh
f="$CMSAF_WORKER_CREDENTIAL_FILE"
echo "file=$f"
echo "scratch=$_CONDOR_SCRATCH_DIR"
stat -c 'mode=%a owner=%U' "$f"
echo "sha256=$(sha256sum < "$f" | cut -d' ' -f1)"
echo "environment=${CMSAF_WORKER_CREDENTIAL:-unset}"
echo "broker=${CMSAF_BROKER_URL:-unset}"
echo "sandbox=$(ls "$_CONDOR_SCRATCH_DIR" | tr '\\n' ' ')"
echo "args=$*"
"""


async def test_an_outbound_only_workers_sandbox_has_the_credential_and_not_the_tls_key(harness):
    reporter = harness.pool.local_dir.parent / "it-outbound-python"
    reporter.write_text(REPORTER)
    reporter.chmod(0o755)
    backend = await harness.backend(outbound_sites=["T2_TEST"], hub_url="http://127.0.0.1:9/", python=str(reporter),
                                    broker_url="http://127.0.0.1:10")
    spec = await harness.cluster("alice", "it-outbound", site="T2_TEST")
    credential = secrets.token_urlsafe(32)
    spec.env[CREDENTIAL_ENV] = credential
    spec.dashboard_prefix = "/services/cmsaf/clusters/it-outbound/dashboard"
    spec.backend_state = {"schedd": backend.schedd_name, "scheduler_address": "tls://127.0.0.1:9"}
    [worker] = await backend.submit_workers(spec, 1)
    track(spec, [worker])
    ads = await queue(backend, 'CmsafCluster == "it-outbound"', [])
    assert no_ad_carries(ads, credential)
    # the batch's inputs job never runs: the worker's stdout comes back into its spool directory
    [iwd] = [ad["Iwd"] for ad in ads if ad["CmsafRole"] == "inputs"]
    out = f"{iwd}/worker-{worker.name}.out"
    await wait_phase(backend, spec, WorkerPhase.EXITED)  # the reporter exits 0
    deadline = time.monotonic() + PHASE_TIMEOUT
    while not (history := await backend.processes.call(SERVICE_IDENTITY, None, "history", backend.schedd_name,
                                                       f"ClusterId == {worker.name.split('.')[0]}", [], 1)):
        assert time.monotonic() < deadline, f"job {worker.name} never reached the history"
        await asyncio.sleep(0.5)
    assert [ad["Out"] for ad in history] == [out]
    assert no_ad_carries(history, credential)  # nor the finished job's ad
    while not (os.path.exists(out) and "args=" in (text := open(out).read())):
        assert time.monotonic() < deadline, f"no report from the outbound worker's job in {out}"
        await asyncio.sleep(0.5)
    report = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    sandbox = report["scratch"]
    assert report["file"] == f"{sandbox}/{WORKER_CREDENTIAL_FILE}"
    assert report["mode"] == "600 owner=alice"
    assert report["sha256"] == hashlib.sha256(credential.encode()).hexdigest()
    assert report["environment"] == "unset"
    assert report["broker"] == "http://127.0.0.1:10"  # the broker's own listener, from the job's environment
    assert {WORKER_CREDENTIAL_FILE, "condor.token"} <= set(report["sandbox"].split())
    assert not {"dask-tls.key", "dask-tls.crt"} & set(report["sandbox"].split())
    assert report["args"].startswith("-m cmsaf_hub.reverse ws://127.0.0.1:9/services/cmsaf/clusters/it-outbound/comm"
                                     f" --name {worker.name} ")
