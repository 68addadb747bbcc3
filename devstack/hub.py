"""Run the repository's ``jupyterhub_config.py`` as a real JupyterHub process on loopback.

One implementation serves the demo launcher and the test harness, so the tests exercise exactly the
configuration a newcomer runs. Settings reach the config through ``CMSAF_*`` environment variables
(documented in the README); callers may append Python text to the config (the tests register an admin
service that way) without touching the repository's file.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE = REPO_ROOT / "jupyterhub_config.py"


class HubError(RuntimeError):
    """The hub could not be started; the message carries the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


@dataclass
class IAMClientSettings:
    """How the hub reaches the identity provider."""

    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    ca_cert: Path | None = None


@dataclass
class HubProcess:
    """A JupyterHub (with its configurable-http-proxy) started from the repository's config."""

    state_dir: Path
    iam: IAMClientSettings
    crypt_key: str = field(repr=False)
    port: int = 0
    extra_config: str = ""
    env: dict[str, str] = field(default_factory=dict)
    config_file: Path = CONFIG_FILE
    startup_timeout: float = 90.0

    proc: asyncio.subprocess.Process | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        self.hub_port = free_port()
        self.proxy_api_port = free_port()
        self.log_path = self.state_dir / "jupyterhub.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def api_url(self) -> str:
        return f"{self.url}hub/api"

    def process_env(self) -> dict[str, str]:
        """The environment that ``jupyterhub_config.py`` reads."""
        env = dict(os.environ)
        env.update(
            {
                "CMSAF_HUB_URL": self.url,
                "CMSAF_HUB_INTERNAL_PORT": str(self.hub_port),
                "CMSAF_PROXY_API_PORT": str(self.proxy_api_port),
                "CMSAF_STATE_DIR": str(self.state_dir),
                "CMSAF_IAM_ISSUER": self.iam.issuer,
                "CMSAF_IAM_CLIENT_ID": self.iam.client_id,
                "CMSAF_IAM_CLIENT_SECRET": self.iam.client_secret,
                "JUPYTERHUB_CRYPT_KEY": self.crypt_key,
            }
        )
        if self.iam.ca_cert:
            env["CMSAF_CA_FILE"] = str(self.iam.ca_cert)
        env.update(self.env)
        return env

    def write_config(self) -> Path:
        """The config the process runs: the repository's file, then the caller's additions."""
        path = self.state_dir / "jupyterhub_config.py"
        path.write_text(
            "c = get_config()  # noqa\n"
            f"load_subconfig({str(self.config_file)!r})  # noqa\n"
            f"{self.extra_config}\n"
        )
        return path

    async def start(self) -> None:
        if not port_is_free(self.port):
            raise HubError(f"port {self.port} on 127.0.0.1 is already in use; stop what uses it or pick another")
        config = self.write_config()
        log = open(self.log_path, "ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "jupyterhub", "-f", str(config),
                cwd=self.state_dir, env=self.process_env(),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_timeout
        async with httpx.AsyncClient(timeout=2) as http:
            while loop.time() < deadline:
                if self.proc.returncode is not None:
                    raise HubError(f"jupyterhub exited with {self.proc.returncode}:\n{tail(self.log_path)}")
                try:
                    r = await http.get(f"{self.api_url}/")
                    if r.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        await self.stop()
        raise HubError(f"jupyterhub not ready after {self.startup_timeout:.0f}s:\n{tail(self.log_path)}")

    async def stop(self, timeout: float = 15.0) -> None:
        """Stop the hub and everything it started (proxy, services, local sessions)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        # The proxy, services and spawned sessions share the hub's process group.
        _signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
