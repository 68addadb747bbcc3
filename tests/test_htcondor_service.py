"""The cluster service with HTCondorBackend under a real hub and dev IAM, HTCondor replaced at the seam.

The chain under test: alice logs in through the dev IAM, the hub exchanges her token for a condor
token, the service reads it from auth_state and hands it to the backend, which submits in alice's own
client process. The double at the bindings seam runs jobs at once and answers queries with the real
ClassAd evaluator, so the reconciler sees workers come and go.
"""

from __future__ import annotations

import asyncio
import json

import jwt
import pytest

from cmsaf_hub.service.crypto import new_crypt_key
from devstack.login import login_via_iam
from devstack.hub import free_port
from devstack.service_hubs import ADMIN_USERS, ServiceHub, service_config_text
from tests.test_htcondor_seam import recorded_calls

pytestmark = pytest.mark.slow

CONDOR_AUD = "https://wlcg.cern.ch/jwt/v1/any"
CONDOR_SCOPE = "compute.read compute.create compute.modify compute.cancel"

AUTH_CONFIG = f"""
import os
c.JupyterHub.authenticator_class = "authenticators.IAMAuthenticator"
c.IAMAuthenticator.issuer = os.environ["CMSAF_IAM_ISSUER"]
c.IAMAuthenticator.token_exchanges = {{"condor": {{"audience": {CONDOR_AUD!r}, "scope": {CONDOR_SCOPE!r}}}}}
"""


def backend_config(record, state) -> str:
    return f"""
import functools
from tests.test_htcondor_seam import RecordingSeam
c.HTCondorBackend.seam_factory = functools.partial(RecordingSeam, {str(record)!r})
c.HTCondorBackend.schedd_name = "schedd@test"
c.HTCondorBackend.state_dir = {str(state)!r}
c.HTCondorBackend.retire_timeout = 3
c.LocalBackend.same_user = True  # the schedulers beside the service (placement "service"); no OS users here
"""


async def recorded_soon(record, method: str, timeout: float = 30) -> list[dict]:
    """The recorded calls of ``method`` once there is one (the reconciler acts after recording targets)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (found := [c for c in recorded_calls(record) if c["method"] == method]) and loop.time() < deadline:
        await asyncio.sleep(0.2)
    return found


async def test_a_users_cluster_is_submitted_scaled_and_removed_as_that_user(hub_factory, tmp_path):
    record, state = tmp_path / "record", tmp_path / "client-state"
    record.mkdir()
    service_dir = tmp_path / "service"
    key = new_crypt_key()
    text = service_config_text(service_dir, port=free_port(), crypt_key=key, backend="htcondor",
                               config=backend_config(record, state))
    hub = await hub_factory(extra_config=ADMIN_USERS + AUTH_CONFIG + text)
    sh = ServiceHub(hub=hub, service_dir=service_dir, crypt_key=key)
    # The double's pool maps the token's subject to the local user, like the schedd's mapfile.
    (record / "script.json").write_text(json.dumps({"fake_queue": True, "subs": {hub.iam.user("alice")["sub"]: "alice"}}))
    await sh.wait_ready()
    browser = await login_via_iam(hub, "alice", "alice-password")
    await browser.aclose()
    token = await hub.user_token("alice")

    async with sh.client(token) as alice:
        r = await alice.post("clusters", json={"options": {"workers": 2, "cores": 1, "memory": 1.0}})
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        await sh.wait_status(alice, cid, "running")
        await sh.wait_workers(alice, cid, 2)

        [submit] = [c for c in recorded_calls(record) if c["method"] == "submit_sharing_inputs"]
        schedd, inputs, description, count, files, reuse = submit["args"]
        assert (schedd, count, reuse) == ("schedd@test", 2, None)  # one call for the whole batch
        assert description["MY.CmsafOwner"] == '"alice"' and description["MY.CmsafCluster"] == f'"{cid}"'
        claims = jwt.decode(submit["token"], options={"verify_signature": False})
        assert claims["sub"] == hub.iam.user("alice")["sub"] and claims["aud"] == CONDOR_AUD
        assert "condor.token" in files and submit["token"] not in json.dumps(description)

        r = await alice.post(f"clusters/{cid}/scale", json={"workers": 1})
        assert r.status_code == 200
        await sh.wait_workers(alice, cid, 1)
        [scale_down] = await recorded_soon(record, "act")
        assert scale_down["args"][1] == "Remove" and len(scale_down["args"][2]) == 1
        assert scale_down["args"][3] == "cmsaf: scaled down" and scale_down["pid"] == submit["pid"]

        assert (await alice.delete(f"clusters/{cid}")).status_code in (200, 202, 204)
        await sh.wait_status(alice, cid, "stopped")

    pool = json.loads((record / "queue.json").read_text())
    jobs = {**pool["history"], **pool["jobs"]}
    assert len(jobs) == 3 and all(job["JobStatus"] == 3 for job in jobs.values())  # nothing left running
    assert {job["Owner"] for job in jobs.values()} == {"alice"}
    assert submit["token"] not in hub.log_text()
