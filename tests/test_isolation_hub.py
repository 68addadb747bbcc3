"""Isolation in the demo's configuration, end to end: the repository's jupyterhub_config.py run as root
with real OS users, the dev IAM, configurable-http-proxy, the cluster service and its local backend.

Alice (a /cms member with an account) runs a task on her own cluster, reached through the hub like
any user would, and tries to read the hub's and the service's databases and keys, the service's
environment, bob's cluster files, keys and ports. Each must fail precisely; bob's task on his own
cluster is the positive control. Sessions run as their OS user with a built environment, and
neither sessions nor the proxy see the hub's secrets.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

import httpx
import pytest
from distributed import Client
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from cmsaf_hub.client import Hub, HubCluster
from cmsaf_hub.service.crypto import new_crypt_key
from devstack.hub import create_system_user, free_port, remove_system_user, shared_python
from devstack.hubs import launch_hub, shutdown_hub
from devstack.login import login_via_iam
from tests.test_isolation_local import probe
from tests.test_spawner_local import start_server, stop_server

pytestmark = pytest.mark.slow

SERVICE_CONFIG = """
c.Reconciler.poll_interval = 0.3
c.Reconciler.backoff_base = 0.2
c.LocalBackend.stop_grace = 3
"""
SESSION_ENV = {
    "HOME", "USER", "SHELL", "PATH",
    "JPY_API_TOKEN", "JUPYTERHUB_ACTIVITY_URL", "JUPYTERHUB_API_TOKEN", "JUPYTERHUB_API_URL", "JUPYTERHUB_BASE_URL",
    "JUPYTERHUB_CLIENT_ID", "JUPYTERHUB_COOKIE_HOST_PREFIX_ENABLED", "JUPYTERHUB_DEFAULT_URL", "JUPYTERHUB_HOST",
    "JUPYTERHUB_OAUTH_ACCESS_SCOPES", "JUPYTERHUB_OAUTH_CALLBACK_URL", "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES",
    "JUPYTERHUB_OAUTH_SCOPES", "JUPYTERHUB_PUBLIC_HUB_URL", "JUPYTERHUB_PUBLIC_URL", "JUPYTERHUB_SERVER_NAME",
    "JUPYTERHUB_SERVICE_PREFIX", "JUPYTERHUB_SERVICE_URL", "JUPYTERHUB_USER",
    "BEARER_TOKEN_FILE", "CMSAF_ISSUER", "CMSAF_SERVICE_URL", "CMSAF_TOKEN_DIR",
    "DASK_DISTRIBUTED__CLIENT__SECURITY_LOADER", "DASK_LABEXTENSION__FACTORY__CLASS",
    "DASK_LABEXTENSION__FACTORY__MODULE", "DASK_GATEWAY__ADDRESS", "DASK_GATEWAY__AUTH__TYPE",
    "DASK_GATEWAY__PROXY_ADDRESS", "DASK_GATEWAY__PUBLIC_ADDRESS",
    "_condor_SCITOKENS_FILE", "_condor_SEC_CLIENT_AUTHENTICATION_METHODS",
}
EOF_ERROR = "SSLEOFError: EOF occurred in violation of protocol (_ssl.c:2393)"
DENIED = "PermissionError: errno 13"


@pytest.fixture
def demo_os_users():
    """OS accounts for the dev IAM's alice and bob (the hub maps users by name); made ones removed."""
    if os.geteuid() != 0:
        pytest.fail("isolation tests need root (CI runs as root): they create OS users")
    created = [name for name in ("alice", "bob") if create_system_user(name)]
    yield
    for name in created:
        remove_system_user(name)


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def processes(*, uid: int | None = None, cmdline_has: str, excluding: str = "\0") -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            owner = os.stat(f"/proc/{entry}").st_uid
        except OSError:
            continue
        if cmdline_has in cmdline and excluding not in cmdline and (uid is None or owner == uid):
            found.append(int(entry))
    return found


def mode_of(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


async def run_in_terminal(hub_url: str, user: str, token: str, command: str) -> str:
    """Run ``command`` in a new terminal of ``user``'s session (Jupyter's terminals API, through
    the proxy); the terminal's output lines up to the command's end, without the echoed input."""
    auth = {"Authorization": f"token {token}"}
    async with httpx.AsyncClient(headers=auth, timeout=30) as http:
        r = await http.post(f"{hub_url}user/{user}/api/terminals")
        assert r.status_code == 200, r.text
        name = r.json()["name"]
    url = f"{hub_url.replace('http://', 'ws://')}user/{user}/terminals/websocket/{name}"
    ws = await websocket_connect(HTTPRequest(url, headers=auth))
    try:
        # the shell prints END42 when done; its echo of the typed line shows END$((6*7))
        ws.write_message(json.dumps(["stdin", f"clear; {command}; echo END$((6*7))\r"]))
        out = ""
        while "END42" not in out.replace("END$((6*7))", ""):
            message = await asyncio.wait_for(ws.read_message(), 60)
            assert message is not None, f"the terminal closed: {out!r}"
            kind, *data = json.loads(message)
            if kind == "stdout":
                out += data[0]
    finally:
        ws.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r", "", out)
    lines = text.split("END42")[-2].splitlines()
    return "\n".join(line for line in lines if line.strip() and "END$((6*7))" not in line)


async def wait_for(predicate, what: str, timeout: float = 120):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (result := predicate()):
        if loop.time() > deadline:
            raise AssertionError(f"{what} never happened")
        await asyncio.sleep(0.3)
    return result


async def test_users_reach_nothing_of_each_other_nor_of_the_hub_and_the_service(dev_pki, demo_os_users):
    base = Path(tempfile.mkdtemp(prefix="cmsaf-isolation-hub-"))
    base.chmod(0o711)  # the users' sessions and clusters live below it
    python = shared_python(base / "env")
    assert python, "no Python that other users can run: see devstack.hub.shared_python"
    (base / "service_config.py").write_text(SERVICE_CONFIG)
    service_key = new_crypt_key()
    hub = await launch_hub(base, env={
        "CMSAF_SAME_USER": "off",  # the repository's default: each user as their own OS account
        "CMSAF_CLUSTER_SERVICE": "on", "CMSAF_SERVICE_PORT": str(free_port()), "CMSAF_USER_PYTHON": python,
        "CMSAF_SERVICE_CONFIG": str(base / "service_config.py"),
        "CMSAF_SERVICE_CRYPT_KEY": service_key,  # given as a variable: the config must move it into a file
    }, extra_config="c.Spawner.default_url = '/api/status'\nc.Spawner.http_timeout = 90\n")
    secrets = {"service crypt key": service_key, "hub crypt key": hub.process.crypt_key,
               "IAM client secret": hub.process.iam.client_secret}
    state = base / "hub"
    try:
        for name in ("alice", "bob"):
            # to the home page: the default next URL spawns the server, racing the explicit starts below
            async with await login_via_iam(hub, name, f"{name}-password", next_url="/hub/home") as session:
                assert session.login_response.status_code == 200
        alice_pw, bob_pw = pwd.getpwnam("alice"), pwd.getpwnam("bob")

        # --- secrets at rest: files 0600, directories 0700/0711, nothing in the hub's database
        assert mode_of(state) == "0o711"
        assert mode_of(state / "secrets") == "0o700"
        for name in ("jupyterhub.sqlite", "cmsaf-service.sqlite", "cmsaf-service-crypt-key",
                     "jupyterhub_cookie_secret", "jupyterhub_config.py", "secrets/iam-client-secret",
                     "secrets/jupyterhub-crypt-key"):
            assert mode_of(state / name) == "0o600", name
        assert (state / "cmsaf-service-crypt-key").read_text() == service_key
        hub_db = (state / "jupyterhub.sqlite").read_bytes()
        for what, value in secrets.items():
            assert value.encode() not in hub_db, f"{what} stored in the hub's database"

        # --- the proxy and the service: no inherited secrets (positive controls: what they do need)
        [proxy_pid] = processes(cmdline_has=f"--api-port {hub.process.proxy_api_port}")
        [service_pid] = processes(cmdline_has=f"sqlite:///{state / 'cmsaf-service.sqlite'}")
        proxy_env, service_env = environ_of(proxy_pid), environ_of(service_pid)
        assert "CONFIGPROXY_AUTH_TOKEN" in proxy_env
        assert service_env["CMSAF_SERVICE_CRYPT_KEY_FILE"] == str(state / "cmsaf-service-crypt-key")
        for what, value in secrets.items():
            assert value not in "".join(proxy_env.values()), f"{what} reached the proxy"
            assert value not in "".join(service_env.values()), f"{what} in the service's environment"

        # --- alice's session runs as alice, with a built environment
        r = await start_server(hub, "alice")
        assert r.status_code in (201, 202), r.text
        [session_pid] = await wait_for(
            lambda: processes(uid=alice_pw.pw_uid, cmdline_has=f"{python} -m jupyterhub.singleuser",
                              excluding="spawners.session"),
            "alice's session")
        session_env = environ_of(session_pid)
        # exactly JupyterHub's variables for the server, env_keep's LANG and PATH, the session's settings
        assert set(session_env) == SESSION_ENV | ({"LANG"} if "LANG" in os.environ else set())
        assert session_env["HOME"] == alice_pw.pw_dir and session_env["USER"] == "alice"
        assert session_env["PATH"].split(":")[0] == os.path.dirname(python)
        for what, value in {**secrets, "proxy token": proxy_env["CONFIGPROXY_AUTH_TOKEN"]}.items():
            assert value not in "".join(session_env.values()), f"{what} reached alice's session"
        assert not {"JUPYTERHUB_CRYPT_KEY", "CONFIGPROXY_AUTH_TOKEN", "CMSAF_SERVICE_CRYPT_KEY",
                    "CMSAF_IAM_CLIENT_SECRET"} & set(session_env)
        token_dir = Path(session_env["CMSAF_TOKEN_DIR"])
        assert (token_dir.stat().st_uid, mode_of(token_dir)) == (alice_pw.pw_uid, "0o700")
        # a terminal in her session: the session environment's python3 and cmsaf-dask, as alice
        alice_token = await hub.user_token("alice")
        out = await run_in_terminal(hub.url, "alice", alice_token,
                                    "id -un; command -v cmsaf-dask; python3 -c 'import cmsaf_hub, sys; print(sys.executable)'")
        env_bin = os.path.dirname(python)
        assert out.splitlines()[-3:] == ["alice", f"{env_bin}/cmsaf-dask", f"{env_bin}/python3"], out
        # ... where bob's session files and the hub's files are out of reach (bob reads his own)
        r = await start_server(hub, "bob")
        assert r.status_code in (201, 202), r.text
        bob_token_file = state / "sessions" / "bob" / "default" / "tokens" / "xrootd.token"
        await wait_for(bob_token_file.exists, "bob's session token file")
        reads = [bob_token_file, state / "jupyterhub.sqlite", state / "secrets" / "jupyterhub-crypt-key",
                 state / "cmsaf-service-crypt-key"]
        out = await run_in_terminal(hub.url, "alice", alice_token,
                                    "; ".join(f"head -c0 {path} && echo read {path}" for path in reads))
        assert out.splitlines()[-len(reads):] == [f"head: cannot open '{path}' for reading: Permission denied"
                                                  for path in reads], out
        bob_out = await run_in_terminal(hub.url, "bob", await hub.user_token("bob"),
                                        f"head -c0 {bob_token_file} && echo read")
        assert bob_out.splitlines()[-1] == "read", bob_out
        await stop_server(hub, "alice")
        await stop_server(hub, "bob")

        # --- alice's task on her own cluster against bob's cluster, the hub and the service
        bob_token = await hub.user_token("bob")
        async with Hub(hub.url, token=alice_token, asynchronous=True) as alice_hub, \
                Hub(hub.url, token=bob_token, asynchronous=True) as bob_hub:
            alice_cluster = await HubCluster(hub=alice_hub, asynchronous=True, workers=1, cores=1, memory=1.0)
            bob_cluster = await HubCluster(hub=bob_hub, asynchronous=True, workers=1, cores=1, memory=1.0)
            clusters = state / "cmsaf-local-clusters"
            async with Client(alice_cluster, asynchronous=True) as alice, Client(bob_cluster, asynchronous=True) as bob:
                await alice.wait_for_workers(1, timeout=120)
                await bob.wait_for_workers(1, timeout=120)
                info = await bob.scheduler.identity()
                [bob_worker] = info["workers"].values()

                def targets(victim: str, attacker: str) -> dict:
                    run, own = clusters / victim / "run", clusters / attacker / "run"
                    return {
                        "canary": service_key,
                        "service_pid": service_pid,
                        "run_dir": str(run),
                        "files": {
                            "bob's tls.key": str(run / "tls.key"),
                            "bob's token": str(run / "tokens" / "xrootd.token"),
                            "hub database": str(state / "jupyterhub.sqlite"),
                            "service database": str(state / "cmsaf-service.sqlite"),
                            "service crypt key": str(state / "cmsaf-service-crypt-key"),
                            "hub crypt key": str(state / "secrets" / "jupyterhub-crypt-key"),
                            "IAM client secret": str(state / "secrets" / "iam-client-secret"),
                            "hub cookie secret": str(state / "jupyterhub_cookie_secret"),
                        },
                        "dashboard_port": info["services"]["dashboard"],
                        "dashboard_metrics": f"/services/cmsaf/clusters/{victim}/dashboard/metrics",
                        "worker_port": bob_worker["services"]["dashboard"],
                        "own_cert": (str(own / "tls.pem"), str(own / "tls.key")),
                    }

                attack = await alice.submit(probe, targets(bob_cluster.cluster_id, alice_cluster.cluster_id), pure=False)
                control = await bob.submit(probe, targets(bob_cluster.cluster_id, bob_cluster.cluster_id), pure=False)

            assert (attack["uid"], control["uid"]) == (alice_pw.pw_uid, bob_pw.pw_uid)
            assert attack["cwd"] == alice_pw.pw_dir  # notebook modules in her home import on her workers
            assert not attack["env_has_canary"] and "JUPYTERHUB_API_TOKEN" not in attack["env_names"]
            assert attack["service_environ"] == DENIED
            assert attack["files"] == {name: DENIED for name in attack["files"]}
            assert attack["listdir"] == DENIED
            assert control["files"]["bob's tls.key"] == control["files"]["bob's token"] == "read"
            assert attack["dashboard_no_cert"] in {"SSLError: TLSV13_ALERT_CERTIFICATE_REQUIRED", EOF_ERROR}
            assert attack["dashboard_own_cert"] in {"SSLError: TLSV1_ALERT_UNKNOWN_CA", EOF_ERROR}
            assert attack["worker_metrics_no_cert"] in {"SSLError: TLSV13_ALERT_CERTIFICATE_REQUIRED", EOF_ERROR}
            assert attack["worker_metrics_own_cert"] in {"SSLError: TLSV1_ALERT_UNKNOWN_CA", EOF_ERROR}
            assert control["dashboard_own_cert"] == control["worker_metrics_own_cert"] == "HTTP/1.1 200 OK"
            assert attack["environs"]["other_readable"] == [] and not attack["environs"]["canary"]

            # the forwarder is the way in: alice's own dashboard through the hub, not bob's
            async with httpx.AsyncClient(headers={"Authorization": f"token {alice_token}"}, timeout=30) as http:
                base_url = f"{hub.url}services/cmsaf/clusters"
                own = await http.get(f"{base_url}/{alice_cluster.cluster_id}/dashboard/status")
                other = await http.get(f"{base_url}/{bob_cluster.cluster_id}/dashboard/status")
            assert own.status_code == 200 and "Dask" in own.text
            assert (other.status_code, other.json()) == (403, {"error": "You may not use this cluster."})
            await alice_cluster.close()
            await bob_cluster.close()
    finally:
        await shutdown_hub(hub, leftovers=base)
        shutil.rmtree(base, ignore_errors=True)
