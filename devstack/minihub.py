"""A small real JupyterHub + configurable-http-proxy (dummy authenticator) with one external service.

For the forwarder's tests and the relay benchmark: the service ``cmsaf`` is whatever the caller
listens with at ``service_port``; users are created and given tokens through an admin service.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devstack.hub import REPO_ROOT, free_port

CHP = REPO_ROOT / "devstack" / "node_modules" / ".bin" / "configurable-http-proxy"
JUPYTERHUB = Path(sys.executable).parent / "jupyterhub"


@dataclass
class MiniHub:
    """A real JupyterHub + CHP with an external service ``cmsaf`` at ``service_port``."""

    state_dir: Path
    port: int = field(default_factory=free_port)
    hub_port: int = field(default_factory=free_port)
    proxy_api_port: int = field(default_factory=free_port)
    service_port: int = field(default_factory=free_port)
    service_token: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}/hub/api"

    def config(self) -> str:
        return f"""
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {self.port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {self.hub_port}
c.JupyterHub.db_url = "sqlite:///{self.state_dir}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{self.state_dir}/cookie_secret"
c.JupyterHub.pid_file = "{self.state_dir}/hub.pid"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{str(CHP)!r}]
c.ConfigurableHTTPProxy.pid_file = "{self.state_dir}/proxy.pid"
c.ConfigurableHTTPProxy.check_running_interval = 1
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = "pw"
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {{"bob"}}
c.JupyterHub.services = [
    {{"name": "cmsaf", "url": "http://127.0.0.1:{self.service_port}", "api_token": {self.service_token!r},
      "oauth_no_confirm": True}},
    {{"name": "admin", "api_token": {self.admin_token!r}}},
]
c.JupyterHub.load_roles = [
    {{"name": "user", "scopes": ["self", "access:services"]}},
    {{"name": "admin-svc", "scopes": ["admin:users", "tokens"], "services": ["admin"]}},
]
"""

    async def start(self) -> None:
        (self.state_dir / "jupyterhub_config.py").write_text(self.config())
        log = open(self.state_dir / "hub.log", "ab")
        self.proc = await asyncio.create_subprocess_exec(
            str(JUPYTERHUB), "-f", str(self.state_dir / "jupyterhub_config.py"),
            cwd=self.state_dir, stdout=log, stderr=subprocess.STDOUT,
        )
        async with httpx.AsyncClient() as http:
            for _ in range(480):  # a loaded 2-core machine can take a minute
                try:
                    if (await http.get(f"{self.url}/hub/api")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if self.proc.returncode is not None:
                    break
                await asyncio.sleep(0.25)
        await self.stop()
        raise RuntimeError("hub did not start:\n" + self.log_tail())

    def log_tail(self) -> str:
        return (self.state_dir / "hub.log").read_text(errors="replace")[-3000:]

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 30)

    async def user_token(self, name: str, scopes: list[str] | None = None) -> str:
        async with httpx.AsyncClient(base_url=self.api_url, headers={"Authorization": f"token {self.admin_token}"}) as api:
            r = await api.post(f"/users/{name}")
            assert r.status_code in (201, 409), r.text
            body = {"note": "forwarder tests", **({"scopes": scopes} if scopes else {})}
            r = await api.post(f"/users/{name}/tokens", json=body)
            r.raise_for_status()
            return r.json()["token"]

    def proxy_pid(self) -> int:
        return int((self.state_dir / "proxy.pid").read_text())
