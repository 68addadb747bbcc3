"""Run the repository's ``jupyterhub_config.py`` as a real JupyterHub process on loopback.

One implementation serves the demo launcher and the test harness, so the tests exercise exactly the
configuration a newcomer runs. Settings reach the config through ``CMSAF_*`` environment variables
(documented in the README); callers may append Python text to the config (the tests register an admin
service that way) without touching the repository's file.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cmsaf_hub.service.crypto import write_secret_file

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE = REPO_ROOT / "jupyterhub_config.py"
#: Never passed to the hub as values (they would reach the proxy and be stored): files instead.
SECRET_VARIABLES = frozenset({"JUPYTERHUB_CRYPT_KEY", "CMSAF_IAM_CLIENT_SECRET", "CMSAF_SERVICE_CRYPT_KEY"})


class HubError(RuntimeError):
    """The hub could not be started; the message carries the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port`` now. With SO_REUSEADDR, like the servers that will
    bind it: connections of a just-stopped server in TIME_WAIT do not count as "in use"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def system_user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def create_system_user(name: str) -> bool:
    """Create the OS account ``name`` (own group, home ``/home/<name>``) unless it exists; needs root.

    Sessions and clusters run as their hub user's OS account. Returns whether it was created (so a
    caller removes only what it made)."""
    if system_user_exists(name):
        return False
    subprocess.run(
        ["useradd", "--create-home", "--user-group", "--shell", "/bin/bash", name],
        check=True, capture_output=True, text=True,
    )
    return True


def remove_system_user(name: str) -> None:
    """Remove an OS account made by :func:`create_system_user` and its home (stop its processes first)."""
    subprocess.run(["userdel", "--remove", "--force", name], check=True, capture_output=True, text=True)


def reachable_by_others(path: str) -> bool:
    """Whether any local user may traverse to and run ``path`` (every parent and the target o+x)."""
    real = Path(os.path.realpath(path))
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in [real, *real.parents])


def shared_python(env_dir: Path) -> str | None:
    """An interpreter with this environment's packages that every local user can run.

    ``sys.executable`` when it is reachable; otherwise (a venv over a Python under a 0700 home,
    e.g. pyenv in /root) a venv at ``env_dir`` over the system Python of the same minor version that
    adds this environment's site-packages, console scripts and Jupyter data. None when neither
    exists: users then cannot run it.
    """
    if reachable_by_others(sys.executable) and reachable_by_others(sys.base_prefix):
        return sys.executable
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = Path("/usr/bin") / version
    if not system.exists() or not reachable_by_others(str(system)):
        return None
    python = overlay_env(env_dir, system)
    return str(python) if reachable_by_others(str(python)) else None


def overlay_env(env_dir: Path, base_python: Path) -> Path:
    """A venv at ``env_dir`` over ``base_python`` (same minor version) with this environment's
    packages, console scripts and Jupyter data, world-readable; returns its interpreter. Also a
    second environment for tests of ``LocalBackend.environments``."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    python = env_dir / "bin" / "python"
    if python.exists():
        return python
    subprocess.run([str(base_python), "-m", "venv", "--without-pip", str(env_dir)], check=True, capture_output=True)
    site_packages = [p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix)]
    pth = env_dir / "lib" / version / "site-packages" / "cmsaf-hub-shared.pth"
    pth.write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in site_packages))
    _copy_console_scripts(Path(sys.executable).parent, env_dir / "bin", python)
    for data in ("etc/jupyter", "share/jupyter"):  # Jupyter's extensions and their config
        if (Path(sys.prefix) / data).is_dir():
            (env_dir / data).parent.mkdir(parents=True, exist_ok=True)
            (env_dir / data).symlink_to(Path(sys.prefix) / data)
    for path in [env_dir, *env_dir.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, 0o755 if path.is_dir() or path.stat().st_mode & stat.S_IXUSR else 0o644)
    return python


def _copy_console_scripts(source: Path, target: Path, python: Path) -> None:
    """This environment's console scripts (``cmsaf-dask``, ``dask``...) for the shared one's PATH."""
    shebang = f"#!{Path(sys.executable).parent}/python".encode()
    for script in source.iterdir():
        if script.is_file() and not script.is_symlink() and not (target / script.name).exists():
            head, _, rest = script.read_bytes().partition(b"\n")
            if head.startswith(shebang):
                (target / script.name).write_bytes(f"#!{python}".encode() + b"\n" + rest)
                (target / script.name).chmod(0o755)


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
    #: ``CMSAF_SAME_USER``: sessions and clusters run as the hub's OS user, NOT isolated. What tests
    #: of other things need (their hub users have no OS accounts); the demo as root and the
    #: isolation tests run with False, each user as their own OS account.
    same_user: bool = True

    proc: asyncio.subprocess.Process | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # traversable (sessions and clusters below belong to their users), not listable
        self.state_dir.chmod(0o711)
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

    def secret_file(self, name: str, value: str) -> str:
        """``value`` in a 0600 file under ``<state_dir>/secrets`` (0700): how secrets reach the hub."""
        directory = self.state_dir / "secrets"
        directory.mkdir(mode=0o700, exist_ok=True)
        directory.chmod(0o700)
        path = directory / name
        write_secret_file(path, value)
        return str(path)

    def process_env(self) -> dict[str, str]:
        """The environment that ``jupyterhub_config.py`` reads; secrets only as file names."""
        env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
        env.update(
            {
                "CMSAF_HUB_URL": self.url,
                "CMSAF_HUB_INTERNAL_PORT": str(self.hub_port),
                "CMSAF_PROXY_API_PORT": str(self.proxy_api_port),
                "CMSAF_STATE_DIR": str(self.state_dir),
                "CMSAF_IAM_ISSUER": self.iam.issuer,
                "CMSAF_IAM_CLIENT_ID": self.iam.client_id,
                "CMSAF_IAM_CLIENT_SECRET_FILE": self.secret_file("iam-client-secret", self.iam.client_secret),
                "JUPYTERHUB_CRYPT_KEY_FILE": self.secret_file("jupyterhub-crypt-key", self.crypt_key),
                "CMSAF_SAME_USER": "on" if self.same_user else "off",
            }
        )
        if self.iam.ca_cert:
            env["CMSAF_CA_FILE"] = str(self.iam.ca_cert)
        env.update(self.env)
        return env

    def write_config(self) -> Path:
        """The config the process runs: the repository's file, then the caller's additions (0600:
        they may hold tokens)."""
        path = self.state_dir / "jupyterhub_config.py"
        write_secret_file(path, (
            "c = get_config()  # noqa\n"
            f"load_subconfig({str(self.config_file)!r})  # noqa\n"
            f"{self.extra_config}\n"
        ))
        return path

    async def start(self) -> None:
        if not port_is_free(self.port):
            raise HubError(f"port {self.port} on 127.0.0.1 is already in use; stop what uses it or pick another")
        config = self.write_config()
        log = os.fdopen(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
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

    def proxy_pid(self) -> int:
        """The hub's configurable-http-proxy (the pid file jupyterhub_config.py names)."""
        return int((self.state_dir / "jupyterhub-proxy.pid").read_text())

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
