"""Start and stop the development identity provider (``devstack/iam/server.mjs``) from Python.

The dev IAM is a real OIDC server (npm ``oidc-provider``) configured like INDIGO-IAM; this module
writes its run configuration, runs ``node`` as a child process, waits for its ``dev-iam ready <issuer>``
line and stops it again. The launcher (``cmsaf-demo``) and the test harness both use :class:`DevIAM`.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from devstack.pki import DevPKI, ensure_dev_pki

DEVSTACK_DIR = Path(__file__).resolve().parent
SERVER_SCRIPT = DEVSTACK_DIR / "iam" / "server.mjs"
DEFAULT_USERS_FILE = DEVSTACK_DIR / "iam" / "users.json"
OIDC_PROVIDER_PACKAGE = DEVSTACK_DIR / "node_modules" / "oidc-provider" / "package.json"

HUB_CLIENT_ID = "cmsaf-hub"
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
HUB_GRANT_TYPES = ["authorization_code", "refresh_token", TOKEN_EXCHANGE_GRANT, DEVICE_CODE_GRANT]
#: Every scope the dev IAM knows; clients registered without a ``scope`` may ask for all of them.
#: ``storage.<op>:/`` allows ``storage.<op>:/<any path>``.
ALL_SCOPES = (
    "openid profile email offline_access wlcg wlcg.groups "
    "compute.read compute.create compute.modify compute.cancel "
    "storage.read:/ storage.create:/ storage.modify:/"
)

READY_PREFIX = "dev-iam ready "
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class DevIAMError(RuntimeError):
    """The dev IAM could not be started (the message carries the process's last log lines)."""


class DevIAM:
    """One dev IAM process: its config, state directory (CA, signing keys, grants) and lifecycle.

    ``port=0`` lets the server pick a free port on first start; later restarts (key rotation) keep
    it, so the issuer URL never changes within the life of this object.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        access_token_lifetime: int = 3600,
        id_token_lifetime: int = 3600,
        refresh_token_lifetime: int = 14 * 24 * 3600,
        device_code_lifetime: int = 600,
        users_file: Path | None = None,
        clients: list[dict] | None = None,
        signing_keys: int = 1,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = port
        self.lifetimes = {
            "access_token": access_token_lifetime,
            "id_token": id_token_lifetime,
            "refresh_token": refresh_token_lifetime,
            "device_code": device_code_lifetime,
        }
        self.users_file = Path(users_file) if users_file else DEFAULT_USERS_FILE
        self.signing_keys = signing_keys
        self.log_path = self.state_dir / "dev-iam.log"
        self._pki: DevPKI | None = None
        self._process: subprocess.Popen | None = None
        self._clients: dict[str, dict] = {}
        for client in clients or []:
            self.add_client(**client)
        if HUB_CLIENT_ID not in self._clients:
            self.add_client(client_id=HUB_CLIENT_ID, client_secret=secrets.token_urlsafe(32),
                            redirect_uris=["http://127.0.0.1:8000/hub/oauth_callback"],
                            grant_types=HUB_GRANT_TYPES)
        self.hub_client_id = HUB_CLIENT_ID

    def __repr__(self) -> str:
        state = "running" if self._process else "stopped"
        return f"<DevIAM {self.host}:{self.port or '?'} {state} state_dir={str(self.state_dir)!r}>"

    # -- what clients of the dev IAM need -------------------------------------------------------

    @property
    def issuer(self) -> str:
        """``https://<host>:<port>/`` (trailing slash, like IAM); known once the port is."""
        if not self.port:
            raise DevIAMError("the dev IAM has no port yet: start() it first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}/"

    @property
    def ca_cert(self) -> Path:
        """The dev CA certificate to trust for the issuer's HTTPS (created on first use)."""
        return self._ensure_pki().ca_cert

    @property
    def pki(self) -> DevPKI:
        """The dev CA and the server certificate this IdP serves (other dev servers reuse them)."""
        return self._ensure_pki()

    @property
    def hub_client_secret(self) -> str:
        return self._clients[HUB_CLIENT_ID]["client_secret"]

    @property
    def clients(self) -> list[dict]:
        """The registered clients (copies; they hold secrets, do not log them)."""
        return [dict(c) for c in self._clients.values()]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def add_client(self, **client: Any) -> None:
        """Register a client (``client_id``, ``client_secret``, ``redirect_uris``, ``grant_types``,
        ``scope``, optional ``default_audience`` and ``post_logout_redirect_uris``); takes effect at
        the next start."""
        if self._process is not None:
            raise DevIAMError("add_client() must be called before start()")
        client_id = client.get("client_id")
        if not client_id:
            raise DevIAMError("a client needs a client_id")
        client.setdefault("client_secret", secrets.token_urlsafe(32))
        client.setdefault("redirect_uris", [])
        client.setdefault("grant_types", ["authorization_code", "refresh_token"])
        client.setdefault("scope", ALL_SCOPES)
        self._clients[client_id] = dict(client)

    def user(self, name: str) -> dict:
        """A demo user: ``{"username", "password", "sub", "groups"}``."""
        users = json.loads(self.users_file.read_text())["users"]
        for entry in users:
            if entry["username"] == name:
                return {key: entry[key] for key in ("username", "password", "sub", "groups")}
        raise KeyError(f"no user {name!r} in {self.users_file}")

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the server; returns once it printed ``dev-iam ready``. Raises DevIAMError."""
        await asyncio.get_running_loop().run_in_executor(None, self.start_blocking)

    async def stop(self) -> None:
        """Terminate the server (kill it if it does not exit in time). Idempotent."""
        await asyncio.get_running_loop().run_in_executor(None, self.stop_blocking)

    async def rotate_signing_key(self) -> None:
        """Restart with a new signing key in front; older keys stay published at ``/jwk``."""
        self.signing_keys += 1
        await self.stop()
        await self.start()

    def start_blocking(self) -> None:
        """Synchronous :meth:`start` (blocks the calling thread)."""
        if self.running:
            return
        node = shutil.which("node")
        if node is None:
            raise DevIAMError("node is not on PATH: install Node.js 20+ to run the dev IAM")
        if not OIDC_PROVIDER_PACKAGE.exists():
            raise DevIAMError("devstack/node_modules is missing oidc-provider: run `npm ci --prefix devstack`")
        config_path = self._write_config()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log_offset = log.tell()
            self._process = subprocess.Popen(
                [node, str(SERVER_SCRIPT), str(config_path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                cwd=DEVSTACK_DIR, start_new_session=True,
            )
        try:
            issuer = self._wait_ready(self._process)
        except DevIAMError as e:
            self.stop_blocking()
            raise DevIAMError(f"{e}; last log lines:\n{self._log_tail(log_offset)}") from None
        self.port = int(issuer.rstrip("/").rsplit(":", 1)[1])

    def stop_blocking(self) -> None:
        """Synchronous :meth:`stop`."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe:
                pipe.close()

    async def client_token(self, client_id: str, *, scope: str,
                           audience: str = "https://wlcg.cern.ch/jwt/v1/any") -> str:
        """A client-credentials access token of a registered client (a service acting as itself)."""
        import httpx

        from devstack.pki import trust

        client = self._clients[client_id]
        async with httpx.AsyncClient(verify=trust(self.ca_cert), timeout=30) as http:
            r = await http.post(f"{self.issuer}token", auth=(client_id, client["client_secret"]),
                                data={"grant_type": "client_credentials", "scope": scope, "audience": audience})
        if r.status_code != 200:
            raise DevIAMError(f"client_credentials for {client_id} refused: {r.status_code} {r.text[:200]}")
        return r.json()["access_token"]

    async def __aenter__(self) -> DevIAM:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> DevIAM:
        self.start_blocking()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_blocking()

    # -- helpers --------------------------------------------------------------------------------

    def _ensure_pki(self) -> DevPKI:
        if self._pki is None:
            self._pki = ensure_dev_pki(self.state_dir)
        return self._pki

    def server_config(self) -> dict:
        """The JSON configuration ``server.mjs`` reads (holds client secrets)."""
        pki = self._ensure_pki()
        return {
            "host": self.host,
            "port": self.port,
            "tls": {"cert": str(pki.server_cert), "key": str(pki.server_key)},
            "state_dir": str(self.state_dir / "provider"),
            "users_file": str(self.users_file),
            "signing_keys": self.signing_keys,
            "ttl": self.lifetimes,
            "clients": list(self._clients.values()),
            "exit_on_stdin_close": True,
        }

    def _write_config(self) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / "dev-iam-config.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.server_config(), f, indent=1)
        return path

    @staticmethod
    def _wait_ready(process: subprocess.Popen) -> str:
        """Read stdout until the ready line; returns the issuer."""
        assert process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        fd = process.stdout.fileno()
        buffer = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DevIAMError(f"the dev IAM did not report ready within {START_TIMEOUT:.0f}s")
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                code = process.wait()
                raise DevIAMError(f"the dev IAM exited with status {code} before it was ready")
            buffer += chunk
            if b"\n" in buffer:
                line = buffer.split(b"\n", 1)[0].decode(errors="replace").strip()
                if not line.startswith(READY_PREFIX):
                    raise DevIAMError(f"unexpected first line from the dev IAM: {line[:200]!r}")
                return line[len(READY_PREFIX):]

    def _log_tail(self, offset: int, lines: int = 20) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"
