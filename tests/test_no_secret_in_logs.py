"""No secret in any log the stack writes, after a full run with a token refresh.

A real hub (with configurable-http-proxy and the cluster service, whose output lands in the hub's
log), the dev IAM with 30 s tokens, a cluster with a real scheduler and worker (their own logs), a
login, a computation through the hub, the cluster's worker credential and key fetched, one refresh
of the IAM tokens, and a stop. Then every log file under the test's directory is read for every
secret the run handed out. (The HTCondor backend's per-identity submit processes are not part of
this local-backend run.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from distributed import Client

from cmsaf_hub.comm import hub_security
from devstack.login import login_via_iam
from devstack.service_hubs import start_service_hub

pytestmark = pytest.mark.slow

LIFETIME = 30
HUB_REFRESH = "c.IAMAuthenticator.refresh_margin = 10.0\nc.IAMAuthenticator.auth_refresh_age = 3\n"


def token_values(auth_state: dict) -> list[str]:
    found = [auth_state.get(k) for k in ("access_token", "refresh_token", "id_token")]
    found += [e.get("access_token") for e in (auth_state.get("exchanged_tokens") or {}).values()]
    return [v for v in found if v]


def log_files(root: Path) -> list[Path]:
    """Every log the stack wrote below ``root``: the hub's (proxy and service included), the IAM's,
    each cluster process's."""
    return sorted(p for p in root.rglob("*.log") if p.is_file())


async def test_no_secret_in_any_log_after_a_full_run_with_a_refresh(hub_factory, tmp_path):
    sh = await start_service_hub(hub_factory, tmp_path, hub_config=HUB_REFRESH,
                                 iam_options={"access_token_lifetime": LIFETIME})
    hub = sh.hub
    secrets = {"hub client secret": hub.process.iam.client_secret, "hub crypt key": hub.process.crypt_key,
               "service crypt key": sh.crypt_key, "admin service token": hub.admin_token}
    states: list[dict] = []
    async with await login_via_iam(hub, "alice", "alice-password", next_url="/hub/home") as browser:
        assert browser.login_response.status_code == 200
        states.append((await hub.get_user("alice"))["auth_state"])
        token = await hub.user_token("alice")
        secrets["alice's API token"] = token
        async with sh.client(token) as api:
            cid = (await api.post("clusters", json={"options": {"workers": 1}})).json()["id"]
            model = await sh.wait_status(api, cid, "running")
            await sh.wait_workers(api, cid, 1)
            async with Client(model["scheduler_address"], security=hub_security(token), asynchronous=True,
                              timeout=60) as client:
                assert await client.submit(sum, [40, 2]) == 42
            secrets["worker credential"] = (await api.get(f"clusters/{cid}/worker-credential")).json()["credential"]
            async with httpx.AsyncClient(timeout=30) as http:
                tls = await http.get(f"{hub.url}services/cmsaf/clusters/{cid}/tls",
                                     headers={"Authorization": f"token {token}"})
            key_lines = [line for line in tls.json()["tls_key"].splitlines() if line and "PRIVATE KEY" not in line]
            secrets["cluster TLS key"] = max(key_lines, key=len)

            # keep alice active until IAM has rotated her tokens (the hub refreshes ahead of expiry)
            deadline = asyncio.get_running_loop().time() + 3 * LIFETIME
            while states[-1]["refresh_token"] == states[0]["refresh_token"]:
                assert asyncio.get_running_loop().time() < deadline, "the hub never refreshed alice's tokens"
                assert (await browser.get(f"{hub.url}hub/home")).status_code == 200
                assert (await api.get("tokens")).status_code == 200
                states.append((await hub.get_user("alice"))["auth_state"])
                await asyncio.sleep(2)
            assert (await api.delete(f"clusters/{cid}")).status_code == 200
            await sh.wait_status(api, cid, "stopped")
    await hub.stop()

    for i, state in enumerate(states):
        for j, value in enumerate(token_values(state)):
            secrets[f"auth_state {i} token {j}"] = value
    logs = log_files(tmp_path)
    names = {p.name for p in logs}
    # positive control: the scan reads what each part of the stack wrote
    assert {"jupyterhub.log", "scheduler.log"} <= names, names
    assert any(p.name.startswith(cid[:8]) or "worker" in p.name for p in logs if p.name != "scheduler.log"), names
    assert hub.iam.log_path in logs
    text = {p: p.read_text(errors="replace") for p in logs}
    assert "Refreshed IAM tokens of alice" in text[hub.log_path]
    assert f"Cluster {cid} created for alice" in text[hub.log_path]  # the service's own lines are there
    leaks = [f"{what} in {p.relative_to(tmp_path)}" for what, value in secrets.items() for p, t in text.items()
             if value in t]
    assert leaks == []
