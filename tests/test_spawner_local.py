"""IAMLocalSpawner in a real hub with the dev IAM: real jupyterhub-singleuser sessions with token files."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest

from devstack.login import login_via_iam, trusting

pytestmark = pytest.mark.slow

CONDOR_AUD = "https://wlcg.cern.ch/jwt/v1/any"
CONDOR_SCOPE = "compute.read compute.create compute.modify compute.cancel"
XROOTD_AUD = "https://xrootd.cmsaf.example:1094"
XROOTD_SCOPE = "storage.read:/"
COLLECTOR = "cm.cmsaf.example:9618"
SCHEDD = "schedd.cmsaf.example"


def local_spawner_config(session_root: Path) -> str:
    """Hub config: IAMAuthenticator with two exchanges, IAMLocalSpawner as the hub's user."""
    exchanges = {
        "condor": {"audience": CONDOR_AUD, "scope": CONDOR_SCOPE},
        "xrootd": {"audience": XROOTD_AUD, "scope": XROOTD_SCOPE},
    }
    return f"""
import os
c.JupyterHub.authenticator_class = "authenticators.IAMAuthenticator"
c.IAMAuthenticator.issuer = os.environ["CMSAF_IAM_ISSUER"]
c.IAMAuthenticator.token_exchanges = {exchanges!r}
c.JupyterHub.spawner_class = "spawners.IAMLocalSpawner"
c.IAMLocalSpawner.run_as_hub_user = True
c.IAMLocalSpawner.session_root = {str(session_root)!r}
c.IAMLocalSpawner.condor_collector_host = {COLLECTOR!r}
c.IAMLocalSpawner.condor_schedd_host = {SCHEDD!r}
c.IAMLocalSpawner.condor_schedd_name = {SCHEDD!r}
c.IAMLocalSpawner.condor_ca_file = os.environ.get("CMSAF_CA_FILE", "")
c.IAMLocalSpawner.default_url = "/api/status"
c.IAMLocalSpawner.start_timeout = 60
c.IAMLocalSpawner.http_timeout = 60
"""


async def start_server(hub, user: str) -> httpx.Response:
    """Ask the hub to start ``user``'s server; wait until it is ready (or the spawn failed)."""
    async with hub.admin_client() as api:
        r = await api.post(f"/users/{user}/server")
        if r.status_code >= 400:
            return r
        for _ in range(600):
            model = (await api.get(f"/users/{user}")).json()
            server = model["servers"].get("")
            if server and server["ready"]:
                return r
            if not server or not server.get("pending") and not server["ready"]:
                break
            await asyncio.sleep(0.2)
        return r


async def stop_server(hub, user: str) -> None:
    async with hub.admin_client() as api:
        r = await api.delete(f"/users/{user}/server")
        assert r.status_code in (202, 204), r.text
        for _ in range(300):
            if "" not in (await api.get(f"/users/{user}")).json()["servers"]:
                return
            await asyncio.sleep(0.2)


def session_processes(token_dir: Path) -> dict[int, dict[str, str]]:
    """``{pid: environ}`` of the notebook servers (not their wrapper) of this session's token dir."""
    found = {}
    marker = f"CMSAF_TOKEN_DIR={token_dir}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        is_server = b"jupyterhub-singleuser" in cmdline or b"jupyterhub.singleuser" in cmdline
        if marker in raw.split(b"\0") and is_server and b"spawners.session" not in cmdline:
            found[int(pid)] = dict(
                item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item
            )
    return found


async def verify_with_iam_jwks(hub, token: str, audience: str) -> dict:
    iam = hub.iam
    async with httpx.AsyncClient(verify=trusting(Path(iam.ca_cert)), timeout=30) as http:
        jwks = (await http.get(f"{iam.issuer}jwk")).json()
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == kid))
    return jwt.decode(token, key.key, algorithms=["RS256"], audience=audience, issuer=iam.issuer)


async def test_session_holds_verified_token_files_and_nothing_secret(hub_factory, tmp_path):
    session_root = tmp_path / "sessions"
    hub = await hub_factory(extra_config=local_spawner_config(session_root))
    browser = await login_via_iam(hub, "alice", "alice-password", next_url="/hub/home")  # no spawn at login
    await browser.aclose()
    r = await start_server(hub, "alice")
    assert r.status_code in (201, 202), r.text

    token_dir = session_root / "alice" / "default" / "tokens"
    assert sorted(os.listdir(token_dir)) == ["condor.token", "xrootd.token"]
    assert stat.S_IMODE(token_dir.stat().st_mode) == 0o700
    for name in ("condor.token", "xrootd.token"):
        info = (token_dir / name).stat()
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.getuid()  # the session user (the hub's own, run_as_hub_user)
    condor = await verify_with_iam_jwks(hub, (token_dir / "condor.token").read_text().strip(), CONDOR_AUD)
    xrootd = await verify_with_iam_jwks(hub, (token_dir / "xrootd.token").read_text().strip(), XROOTD_AUD)
    assert set(condor["scope"].split()) == set(CONDOR_SCOPE.split())
    assert xrootd["scope"].split() == [XROOTD_SCOPE]

    [env] = session_processes(token_dir).values()
    assert env["CMSAF_TOKEN_DIR"] == str(token_dir)
    assert env["BEARER_TOKEN_FILE"] == str(token_dir / "xrootd.token")
    assert env["_condor_SCITOKENS_FILE"] == str(token_dir / "condor.token")
    assert env["_condor_SEC_CLIENT_AUTHENTICATION_METHODS"] == "SCITOKENS"
    assert env["CMSAF_ISSUER"] == hub.iam.issuer
    assert env["CMSAF_SERVICE_URL"] == f"{hub.url}services/cmsaf/"
    assert env["HOME"] == str(session_root / "alice" / "home")

    # htcondor2 inside the session's environment resolves the configured pool and token file.
    probe = (
        "import json, htcondor2; p = htcondor2.param; print(json.dumps({k: p.get(k) for k in "
        "('COLLECTOR_HOST', 'SCHEDD_HOST', 'SCHEDD_NAME', 'SCITOKENS_FILE', "
        "'SEC_CLIENT_AUTHENTICATION_METHODS', 'AUTH_SSL_CLIENT_CAFILE')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "COLLECTOR_HOST": COLLECTOR,
        "SCHEDD_HOST": SCHEDD,
        "SCHEDD_NAME": SCHEDD,
        "SCITOKENS_FILE": str(token_dir / "condor.token"),
        "SEC_CLIENT_AUTHENTICATION_METHODS": "SCITOKENS",
        "AUTH_SSL_CLIENT_CAFILE": str(hub.iam.ca_cert),
    }

    auth_state = (await hub.get_user("alice"))["auth_state"]
    never = {
        "refresh token": auth_state["refresh_token"],
        "id token": auth_state["id_token"],
        "login access token": auth_state["access_token"],
        "client secret": hub.process.iam.client_secret,
    }
    env_text = "\n".join(f"{k}={v}" for k, v in env.items())
    files_text = "".join(p.read_text() for p in token_dir.iterdir())
    await stop_server(hub, "alice")
    log_text = hub.log_text()
    for what, value in never.items():
        assert value and value not in env_text, f"{what} in the session env"
        assert value not in files_text, f"{what} in the token files"
        assert value not in log_text, f"{what} in the hub/session log"
    for exchanged in auth_state["exchanged_tokens"].values():
        assert exchanged["access_token"] not in log_text
    assert not token_dir.exists()  # removed with the server


async def test_missing_auth_state_is_a_clear_spawn_error(hub_factory, tmp_path):
    hub = await hub_factory(extra_config=local_spawner_config(tmp_path / "sessions"))
    await hub.create_user("carol")  # exists in the hub, never logged in: no auth_state
    r = await start_server(hub, "carol")
    assert r.status_code >= 400
    assert "No stored login tokens for carol" in r.json()["message"]
    async with hub.admin_client() as api:
        assert (await api.get("/")).status_code == 200  # the hub keeps running
    assert not (tmp_path / "sessions" / "carol").exists()


def cmsaf_service_config(state_dir: Path) -> str:
    """Register the cluster service (token endpoint) unless the repository's config already does."""
    return f"""
import sys
import time
from cryptography.fernet import Fernet
from devstack.hub import free_port
_services = c.JupyterHub.services
_services = _services.to_dict().get("extend", []) if hasattr(_services, "to_dict") else _services
if not any(s.get("name") == "cmsaf" for s in _services):
    c.JupyterHub.services.append({{
        "name": "cmsaf",
        "url": f"http://127.0.0.1:{{free_port()}}",
        "command": [sys.executable, "-m", "cmsaf_hub", "--db-url", "sqlite:///{state_dir}/cmsaf.sqlite"],
        "environment": {{"CMSAF_SERVICE_CRYPT_KEY": Fernet.generate_key().decode()}},
    }})
    # users (and so their servers' tokens, see IAMLocalSpawner.server_token_scopes) may call it
    c.JupyterHub.load_roles.append({{"name": "user", "scopes": ["self", "access:services!service=cmsaf"]}})
    c.JupyterHub.load_roles.append({{
        "name": "cmsaf-service",
        "scopes": ["admin:auth_state", "read:users", "list:users", "read:users:groups"],
        "services": ["cmsaf"],
    }})
"""


def token_files_now(token_dir: Path) -> dict[str, str]:
    return {name: (token_dir / name).read_text() for name in ("condor.token", "xrootd.token")}


async def wait_until(predicate, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not reached: {what}")
        await asyncio.sleep(0.5)


async def test_short_lived_tokens_replaced_before_expiry_and_through_an_idp_outage(hub_factory, tmp_path):
    session_root = tmp_path / "sessions"
    hub = await hub_factory(
        # 30 s tokens: a 10 s margin, checked every 3 s (docs/authenticator.md, "Choosing the refresh timing")
        extra_config=local_spawner_config(session_root) + cmsaf_service_config(tmp_path)
        + "c.IAMAuthenticator.refresh_margin = 10.0\nc.IAMAuthenticator.auth_refresh_age = 3\n",
        iam_options={"access_token_lifetime": 30},
    )
    browser = await login_via_iam(hub, "alice", "alice-password", next_url="/hub/home")  # no spawn at login
    await browser.aclose()
    r = await start_server(hub, "alice")
    assert r.status_code in (201, 202), r.text
    token_dir = session_root / "alice" / "default" / "tokens"

    # Several cycles: every condor token the session sees must still be valid when it is replaced.
    seen: list[tuple[str, float]] = []  # (token, exp) in the order the session saw them
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 100
    while len(seen) < 3 and loop.time() < deadline:
        token = token_files_now(token_dir)["condor.token"].strip()
        if not seen or seen[-1][0] != token:
            observed = time.time()  # before the JWKS round trip, which says nothing of the session
            claims = await verify_with_iam_jwks(hub, token, CONDOR_AUD)
            if seen:
                assert observed < seen[-1][1], "the previous condor token expired before being replaced"
            seen.append((token, claims["exp"]))
        await asyncio.sleep(0.5)
    assert len(seen) >= 3, f"only {len(seen)} condor tokens seen in the session"
    for path in token_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    # The IdP goes away: the refresher keeps asking (and backing off), then recovers once it is back.
    await hub.iam.stop()
    await wait_until(
        lambda: "Token refresh failed (token endpoint returned tokens expired" in hub.log_text(),
        120,
        "the refresher noticing that the hub could not refresh while IAM is down",
    )
    before = token_files_now(token_dir)
    await hub.iam.start()
    await wait_until(lambda: token_files_now(token_dir) != before, 120, "token files replaced after IAM is back")
    after = token_files_now(token_dir)
    await verify_with_iam_jwks(hub, after["condor.token"].strip(), CONDOR_AUD)
    await verify_with_iam_jwks(hub, after["xrootd.token"].strip(), XROOTD_AUD)

    log_text = hub.log_text()
    for token, _ in seen:
        assert token not in log_text
