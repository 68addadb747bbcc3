"""The foundation works as the README promises: the launcher, the config, login through the real IdP."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import httpx
import psutil
import pytest

from devstack.hub import REPO_ROOT, free_port, port_is_free, remove_system_user, system_user_exists
from devstack.xrootd import missing_prerequisites
from devstack.login import login_via_iam, trusting

LAUNCHER = [sys.executable, "-m", "devstack.launcher"]


def run_quick(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 60):
    import subprocess

    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def test_launcher_port_in_use_is_one_clear_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_quick(LAUNCHER + ["--port", str(port), "--iam-port", str(free_port()),
                                  "--service-port", str(free_port()), "--state-dir", str(tmp_path)])
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"port {port}" in lines[0] and "--port" in lines[0]
    assert "Traceback" not in r.stderr


def test_launcher_without_node_is_one_clear_line(tmp_path):
    r = run_quick(LAUNCHER + ["--state-dir", str(tmp_path)], env={"PATH": str(tmp_path)})
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "cmsaf-demo: node is not on PATH: install Node.js 20+ (Debian: apt-get install nodejs npm)"
    )


def test_config_refuses_to_start_without_crypt_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JUPYTERHUB_CRYPT_KEY"}
    env.update(CMSAF_STATE_DIR=str(tmp_path), CMSAF_IAM_ISSUER="https://127.0.0.1:9/",
               CMSAF_IAM_CLIENT_ID="x", CMSAF_IAM_CLIENT_SECRET="y")
    import subprocess

    r = subprocess.run([sys.executable, "-m", "jupyterhub", "-f", str(REPO_ROOT / "jupyterhub_config.py")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert r.returncode != 0
    assert "set JUPYTERHUB_CRYPT_KEY" in r.stderr


def test_config_names_a_missing_required_setting(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMSAF_")}
    env.update(CMSAF_STATE_DIR=str(tmp_path), JUPYTERHUB_CRYPT_KEY="00" * 32)
    import subprocess

    r = subprocess.run([sys.executable, "-m", "jupyterhub", "-f", str(REPO_ROOT / "jupyterhub_config.py")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert r.returncode != 0
    assert "set CMSAF_IAM_ISSUER" in r.stderr


@pytest.mark.slow
async def test_alice_logs_in_through_the_idp_and_groups_are_mirrored(hub_factory):
    hub = await hub_factory()
    session = await login_via_iam(hub, "alice", "alice-password", next_url="/hub/home")
    async with session:
        landed = session.login_response
        assert landed.status_code == 200
        assert str(landed.url).startswith(hub.url)
        model = await hub.get_user("alice")
        assert "/cms" in model["groups"]
        assert model["admin"] is False
        # the login is real: the hub now serves alice's home page on her cookie
        home = await session.get(f"{hub.url}hub/home")
        assert home.status_code == 200 and "alice" in home.text


@pytest.mark.slow
async def test_admin_group_makes_bob_admin_and_eve_is_refused(hub_factory):
    hub = await hub_factory()
    async with await login_via_iam(hub, "bob", "bob-password") as bob:
        assert bob.login_response.status_code == 200
    assert (await hub.get_user("bob"))["admin"] is True

    async with await login_via_iam(hub, "eve", "eve-password") as eve:
        assert eve.login_response.status_code == 403
    async with hub.admin_client() as api:
        assert (await api.get("/users/eve")).status_code == 404


@pytest.fixture
def traversable_dir():
    """A state directory the demo users may traverse to their sessions and clusters (pytest's
    tmp_path is below a root-only directory)."""
    path = Path(tempfile.mkdtemp(prefix="cmsaf-demo-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
async def test_demo_command_serves_a_hub_whose_sign_in_goes_to_the_dev_iam(traversable_dir):
    port, iam_port, service_port = free_port(), free_port(), free_port()
    existing_users = {name for name in ("alice", "bob", "eve") if system_user_exists(name)}
    tmp_path = traversable_dir
    proc = await asyncio.create_subprocess_exec(
        *LAUNCHER, "--port", str(port), "--iam-port", str(iam_port), "--service-port", str(service_port),
        "--state-dir", str(tmp_path),
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    output = ""
    try:
        while "Press Ctrl-C" not in output:
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            assert line, f"launcher exited early:\n{output}"
            output += line.decode()
        assert f"http://127.0.0.1:{port}/" in output
        assert re.search(r"alice\s+password alice-password", output)
        # it says plainly whether users are isolated (as root: their own OS users)
        if os.geteuid() == 0:
            assert "Users are isolated: each user's sessions and clusters run as their own OS user" in output
            assert all(system_user_exists(name) for name in ("alice", "bob", "eve"))
        else:
            assert "Users are NOT isolated: every demo user's sessions and clusters run as" in output
        if missing_prerequisites() is None:  # the optional local XRootD site came up beside the hub
            assert re.search(r"Data:\s+origin roots://localhost:\d+, XCache roots://localhost:\d+", output)
        ca = tmp_path / "iam" / "pki" / "ca.pem"
        async with httpx.AsyncClient(verify=trusting(ca), follow_redirects=True, timeout=30) as http:
            page = await http.get(f"http://127.0.0.1:{port}/hub/oauth_login")
        assert page.status_code == 200
        assert str(page.url).startswith(f"https://127.0.0.1:{iam_port}/")
        assert 'name="password"' in page.text
        async with httpx.AsyncClient(timeout=10) as http:
            for _ in range(100):  # the hub starts its managed cluster service beside it
                health = await http.get(f"http://127.0.0.1:{port}/services/cmsaf/api/v1/health")
                if health.status_code == 200:
                    break
                await asyncio.sleep(0.3)
        assert health.status_code == 200, health.text
        scheduler_pid = await start_a_cluster_as_alice(f"http://127.0.0.1:{port}/", ca, tmp_path)
        assert psutil.pid_exists(scheduler_pid)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 60)
        for name in {"alice", "bob", "eve"} - existing_users:
            if system_user_exists(name):
                remove_system_user(name)
    assert proc.returncode == 0
    # Ctrl-C stopped everything it started, alice's cluster included: nothing listens any more ...
    assert not psutil.pid_exists(scheduler_pid) or psutil.Process(scheduler_pid).status() == psutil.STATUS_ZOMBIE
    assert list((tmp_path / "hub" / "cmsaf-local-clusters").iterdir()) == []
    for p in (port, iam_port, service_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", p)) != 0
        # ... and ./demo may start again at once (connections in TIME_WAIT do not block its port check)
        assert port_is_free(p)


async def start_a_cluster_as_alice(hub_url: str, ca, state_dir) -> int:
    """Log in as alice, make a token, create a 1-worker cluster; return its scheduler's pid."""
    hub = SimpleNamespace(url=hub_url, process=SimpleNamespace(iam=SimpleNamespace(ca_cert=ca)))
    async with await login_via_iam(hub, "alice", "alice-password", next_url="/hub/home") as session:
        assert session.login_response.status_code == 200
        xsrf = session.cookies.get("_xsrf")
        r = await session.post(f"{hub_url}hub/api/users/alice/tokens", json={"note": "demo test"},
                               headers={"X-XSRFToken": xsrf})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
    async with httpx.AsyncClient(base_url=f"{hub_url}services/cmsaf/api/v1/", timeout=60,
                                 headers={"Authorization": f"token {token}"}) as api:
        r = await api.post("clusters", json={"options": {"workers": 1}})
        assert r.status_code == 201, r.text
        model = r.json()
        for _ in range(120):
            if model["status"] == "running" and model["workers"]["running"] == 1:
                break
            assert model["status"] in ("pending", "starting", "running"), model
            model = (await api.get(f"clusters/{model['id']}", params={"wait": 5, "status": model["status"]})).json()
        assert model["status"] == "running" and model["workers"]["running"] == 1, model
    pid_file = state_dir / "hub" / "cmsaf-local-clusters" / model["id"] / "pids" / "scheduler"
    return int(pid_file.read_text().split()[0])
