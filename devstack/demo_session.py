"""Drive the real demo as its user does: ``cmsaf-demo`` running, a login through the dev IAM's form, the
user's JupyterLab server spawned by the hub, and code run in a kernel of that server.

A kernel started by the session's Jupyter server has exactly the environment a spawner gives a session
(``BEARER_TOKEN_FILE``, ``CMSAF_*``, ``JUPYTERHUB_API_TOKEN``, its working directory), so what runs there
runs as it would for a physicist. Used by the notebook and doc tests and by ``benchmarks/analysis.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from devstack.hub import REPO_ROOT, free_port
from devstack.login import HubSession, login_via_iam


class DemoError(RuntimeError):
    """The demo, a login, a spawn or a kernel did not do what a user would see it do."""


@dataclass
class Demo:
    """A running ``cmsaf-demo`` process with its own ports and a fresh state directory.

    The directory is made under the system's temporary directory and is traversable by others
    (0711), because the demo's sessions and clusters run as the demo users' own OS accounts and must
    reach the Python environment the demo puts there; ``stop()`` removes it.
    """

    port: int = field(default_factory=free_port)
    state_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cmsaf-demo-")))
    proc: asyncio.subprocess.Process | None = field(default=None, repr=False)
    banner: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "demo.log"

    async def start(self, timeout: float = 240) -> None:
        self.state_dir.chmod(0o711)
        log = open(self.log_path, "wb")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "devstack.launcher", "--port", str(self.port), "--iam-port", str(free_port()),
            "--service-port", str(free_port()), "--gateway-port", str(free_port()),
            "--state-dir", str(self.state_dir),
            cwd=REPO_ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            text = self.log_path.read_text(errors="replace")
            if "Press Ctrl-C to stop everything." in text:
                self.banner = text
                return
            if self.proc.returncode is not None:
                raise DemoError(f"cmsaf-demo exited with {self.proc.returncode}:\n{text[-3000:]}")
            await asyncio.sleep(0.3)
        await self.stop()
        raise DemoError(f"cmsaf-demo not ready after {timeout:.0f}s:\n{self.log_path.read_text()[-3000:]}")

    def ca_file(self) -> Path:
        """The dev CA the demo's banner names."""
        match = re.search(r"\(CA: ([^)]+)\)", self.banner)
        if not match:
            raise DemoError(f"the demo's banner names no CA:\n{self.banner}")
        return Path(match.group(1))

    def hub_errors(self, lines: int = 15) -> str:
        """The hub log's last error lines, for messages that must say why the hub refused."""
        try:
            text = (self.state_dir / "hub" / "jupyterhub.log").read_text(errors="replace")
        except OSError:
            return "(no hub log)"
        return "\n".join([line for line in text.splitlines() if line.startswith("[E")][-lines:]) or "(no errors logged)"

    async def stop(self, timeout: float = 60) -> None:
        """Ctrl-C, as a user stops it."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        shutil.rmtree(self.state_dir, ignore_errors=True)


@dataclass
class UserSession:
    """A user's running JupyterLab server behind the demo hub, reached with the user's hub API token."""

    demo: Demo
    user: str
    token: str = field(repr=False)

    @property
    def server_url(self) -> str:
        return f"{self.demo.url}user/{self.user}/"

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers={"Authorization": f"token {self.token}"}, timeout=60)

    async def put_file(self, name: str, content: str, *, notebook: bool = False) -> None:
        """Save a file into the user's home directory through the server's contents API."""
        model = ({"type": "notebook", "format": "json", "content": json.loads(content)} if notebook
                 else {"type": "file", "format": "text", "content": content})
        async with self.http() as http:
            r = await http.put(f"{self.server_url}api/contents/{quote(name)}", json=model)
        if r.status_code not in (200, 201):
            raise DemoError(f"saving {name} in {self.user}'s server: {r.status_code} {r.text[:300]}")

    async def kernel(self, path: str) -> "SessionKernel":
        """A new kernel for the notebook at ``path`` (its working directory is the notebook's folder)."""
        async with self.http() as http:
            r = await http.post(f"{self.server_url}api/sessions", json={
                "path": path, "type": "notebook", "name": Path(path).name, "kernel": {"name": "python3"}})
        if r.status_code != 201:
            raise DemoError(f"starting a kernel in {self.user}'s server: {r.status_code} {r.text[:300]}")
        model = r.json()
        kernel = SessionKernel(self, model["kernel"]["id"], model["id"])
        await kernel.connect()
        return kernel


async def log_in_and_spawn(demo: Demo, user: str, password: str, timeout: float = 180) -> UserSession:
    """Log ``user`` in through the dev IAM's form, take a hub API token, and start the user's server."""
    session: HubSession = await login_via_iam(demo, user, password, ca_cert=demo.ca_file())
    async with session:
        home = await session.get(f"{demo.url}hub/home")
        home.raise_for_status()
        xsrf = session.cookies.get("_xsrf", path="/hub/") or session.cookies.get("_xsrf")
        r = await session.post(f"{demo.url}hub/api/users/{user}/tokens", json={"note": "demo_session"},
                               headers={"X-XSRFToken": xsrf or ""})
        if r.status_code != 201:
            raise DemoError(f"{user} could not create a hub API token: {r.status_code} {r.text[:300]}")
        token = r.json()["token"]
    api = f"{demo.url}hub/api/users/{user}"
    async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}, timeout=60) as http:
        r = await http.post(f"{api}/server")
        if r.status_code not in (201, 202, 400):  # 400: already running
            raise DemoError(f"spawning {user}'s server: {r.status_code} {r.text[:300]}\n{demo.hub_errors()}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            model = (await http.get(api)).json()
            server = model.get("servers", {}).get("", {})
            if server.get("ready"):
                return UserSession(demo, user, token)
            if not server.get("pending") and not server:
                raise DemoError(f"{user}'s server stopped while starting:\n{demo.hub_errors()}")
            await asyncio.sleep(0.5)
    raise DemoError(f"{user}'s server not ready after {timeout:.0f}s")


class CellError(DemoError):
    """A cell raised: carries the kernel's traceback."""


@dataclass
class SessionKernel:
    """One kernel of a user's server, driven over the Jupyter kernel websocket protocol."""

    session: UserSession
    kernel_id: str
    session_id: str
    _ws: object = field(default=None, repr=False)

    async def connect(self) -> None:
        url = (f"{self.session.server_url}api/kernels/{self.kernel_id}/channels"
               .replace("http://", "ws://").replace("https://", "wss://"))
        self._ws = await websocket_connect(HTTPRequest(
            url, headers={"Authorization": f"token {self.session.token}"}, request_timeout=60))

    async def execute(self, code: str, timeout: float = 600) -> list[dict]:
        """Run ``code``; return its outputs as nbformat output dicts, or raise CellError on an error."""
        msg_id = uuid.uuid4().hex
        await self._ws.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": self.session.user,
                       "session": self.session_id, "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        outputs: list[dict] = []
        reply: dict | None = None
        idle = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while reply is None or not idle:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DemoError(f"a cell did not finish in {timeout:.0f}s:\n{code[:500]}")
            raw = await asyncio.wait_for(self._ws.read_message(), remaining)
            if raw is None:
                raise DemoError("the kernel's websocket closed (did the kernel die?)")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["header"]["msg_type"], msg["content"]
            if kind == "execute_reply":
                reply = content
            elif kind == "status" and content.get("execution_state") == "idle":
                idle = True
            elif kind == "stream":
                outputs.append({"output_type": "stream", "name": content["name"], "text": content["text"]})
            elif kind in ("execute_result", "display_data"):
                outputs.append({"output_type": kind, "data": content["data"], "metadata": content.get("metadata", {}),
                                **({"execution_count": content.get("execution_count")} if kind == "execute_result" else {})})
            elif kind == "error":
                outputs.append({"output_type": "error", "ename": content["ename"], "evalue": content["evalue"],
                                "traceback": content["traceback"]})
        if reply.get("status") != "ok":
            tb = "\n".join(reply.get("traceback", [])) or f"{reply.get('ename')}: {reply.get('evalue')}"
            raise CellError(re.sub(r"\x1b\[[0-9;]*m", "", tb))
        return outputs

    async def shutdown(self) -> None:
        if self._ws is not None:
            self._ws.close()
        async with self.session.http() as http:
            await http.delete(f"{self.session.server_url}api/sessions/{self.session_id}")


def output_text(outputs: list[dict]) -> str:
    """What a person reads in a cell's output: streams and text/plain results."""
    parts = []
    for out in outputs:
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)
