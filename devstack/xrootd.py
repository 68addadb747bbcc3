"""A token-authorised XRootD origin and an XCache in front of it, from Debian's xrootd packages.

Used by the demo launcher (when the packages are installed) and by the data-access tests. Both servers
authorise reads with WLCG tokens issued by the dev IAM (SciTokens plugin, ``ztn`` protocol over TLS with
the dev CA); the cache reaches the origin with its own service token. Facts this relies on are in
``shared/notes/xrootd.md``: xrootd refuses to run as root (we pass ``-R xrootd``), and the SciTokens
plugin fetches the issuer's keys with the system trust store (the dev CA must be installed there).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from devstack.hub import free_port
from devstack.pki import trust_system_wide, untrust_system_wide

WLCG_AUDIENCE = "https://wlcg.cern.ch/jwt/v1/any"
XROOTD_USER = "xrootd"


class XRootDError(RuntimeError):
    """An XRootD server could not be started; the message carries the end of its log."""


def missing_prerequisites() -> str | None:
    """Why a token-authorised origin cannot run on this machine, or None when it can."""
    if shutil.which("xrootd") is None:
        return "xrootd is not installed (Debian: apt-get install xrootd-server xrootd-scitokens-plugins)"
    if not any(Path(d, "libXrdAccSciTokens-5.so").exists() for d in ("/usr/lib/x86_64-linux-gnu",
                                                                      "/usr/lib/aarch64-linux-gnu",
                                                                      "/usr/lib64", "/usr/lib")):
        return "the XRootD SciTokens plugin is missing (Debian: apt-get install xrootd-scitokens-plugins)"
    try:
        pwd.getpwnam(XROOTD_USER)
    except KeyError:
        return f"no '{XROOTD_USER}' system user (created by Debian's xrootd-server package)"
    if os.geteuid() != 0:
        return "starting xrootd as its own user and trusting the dev CA system-wide needs root"
    return None


def hashed_ca_dir(ca_cert: Path, directory: Path) -> Path:
    """A directory in the ``X509_CERT_DIR`` layout (``<subject hash>.0``) holding the dev CA."""
    directory.mkdir(parents=True, exist_ok=True)
    subject_hash = subprocess.run(
        ["openssl", "x509", "-noout", "-subject_hash", "-in", str(ca_cert)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    shutil.copyfile(ca_cert, directory / f"{subject_hash}.0")
    return directory


def scitokens_config(issuer: str, base_path: str = "/", audience: str = WLCG_AUDIENCE) -> str:
    """The SciTokens authorisation plugin's config: one trusted issuer whose scope paths start at
    ``base_path``. With ``/``, ``storage.read:/store/user/alice`` means exactly that namespace path."""
    return (
        "[Global]\n"
        f"audience = {audience}\n\n"
        "[Issuer cms-iam]\n"
        f"issuer = {issuer}\n"
        f"base_path = {base_path}\n"
        f"default_user = {XROOTD_USER}\n"
    )


def security_directives(cert: Path, key: Path, ca_cert: Path, scitokens_cfg: Path) -> str:
    """TLS + token authentication + SciTokens authorisation, shared by the origin and the cache."""
    return (
        f"xrd.tls {cert} {key}\n"
        f"xrd.tlsca certfile {ca_cert}\n"
        "xrootd.seclib libXrdSec.so\n"
        "sec.protocol ztn\n"
        "sec.protbind * only ztn\n"
        "ofs.authorize 1\n"
        f"ofs.authlib libXrdAccSciTokens.so config={scitokens_cfg}\n"
    )


def origin_config(port: int, export: str, data_root: Path, run_dir: Path, security: str) -> str:
    """An origin serving ``<data_root><export>`` as ``export``."""
    return (
        f"xrd.port {port}\n"
        f"all.export {export}\n"
        f"oss.localroot {data_root}\n"
        f"all.adminpath {run_dir}\n"
        f"all.pidpath {run_dir}\n"
        f"{security}"
    )


def cache_config(port: int, export: str, origin: str, cache_root: Path, run_dir: Path, security: str,
                 ram: str = "1g", blocksize: str = "16m") -> str:
    """An XCache (proxy + file cache) in front of ``origin`` (``roots://host:port``)."""
    return (
        f"xrd.port {port}\n"
        f"all.export {export}\n"
        "ofs.osslib libXrdPss.so\n"
        "pss.cachelib libXrdPfc.so\n"
        f"pss.origin {origin}\n"
        f"oss.localroot {cache_root}\n"
        f"pfc.ram {ram}\n"
        f"pfc.blocksize {blocksize}\n"
        f"all.adminpath {run_dir}\n"
        f"all.pidpath {run_dir}\n"
        f"{security}"
    )


def _chown_tree(path: Path, user: str = XROOTD_USER) -> None:
    pw = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for entry in [root, *(os.path.join(root, name) for name in files)]:
            try:
                os.lchown(entry, pw.pw_uid, pw.pw_gid)
            except FileNotFoundError:  # a server's own runtime files may come and go
                pass


@dataclass
class XRootDServer:
    """One xrootd process, run as the ``xrootd`` user in ``work_dir``."""

    name: str
    work_dir: Path
    config_text: str
    port: int
    env: dict[str, str] = field(default_factory=dict, repr=False)
    proc: asyncio.subprocess.Process | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"roots://localhost:{self.port}"

    @property
    def log_path(self) -> Path:
        # With ``-n NAME`` xrootd writes its log into a NAME/ subdirectory of the one given.
        return self.work_dir / self.name / f"{self.name}.log"

    async def start(self, timeout: float = 20.0) -> None:
        cfg = self.work_dir / f"{self.name}.cfg"
        cfg.write_text(self.config_text)
        _chown_tree(self.work_dir)
        self.proc = await asyncio.create_subprocess_exec(
            "xrootd", "-R", XROOTD_USER, "-n", self.name, "-c", str(cfg), "-l", str(self.work_dir / f"{self.name}.log"),
            env={**os.environ, **self.env}, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.proc.returncode is not None:
                raise XRootDError(f"xrootd {self.name} exited with {self.proc.returncode}:\n{self._log_tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        await self.stop()
        raise XRootDError(f"xrootd {self.name} not listening after {timeout:.0f}s:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 10)
        except (ProcessLookupError, asyncio.TimeoutError):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()


@dataclass
class DataStack:
    """An origin exporting ``/store`` and an XCache in front of it, both trusting one issuer.

    Everything the servers read is copied into a fresh directory of their own that the ``xrootd``
    user can reach (test and state directories are usually private to root); ``stop()`` removes it.
    """

    issuer: str
    ca_cert: Path
    server_cert: Path
    server_key: Path
    #: The cache's own token for reading from the origin (a storage.read service token).
    cache_token_file: Path
    export: str = "/store"

    def __post_init__(self) -> None:
        self.work_dir = Path(tempfile.mkdtemp(prefix="cmsaf-xrootd-"))
        os.chmod(self.work_dir, 0o755)
        self.data_root = self.work_dir / "origin-data"
        self.cache_root = self.work_dir / "cache-data"
        self.origin: XRootDServer | None = None
        self.cache: XRootDServer | None = None
        self._trusted: Path | None = None

    def _security(self, run_dir: Path) -> str:
        tls_dir = run_dir / "tls"
        tls_dir.mkdir(parents=True, exist_ok=True)
        cert, key, ca = tls_dir / "server.pem", tls_dir / "server-key.pem", tls_dir / "ca.pem"
        shutil.copyfile(self.ca_cert, ca)
        shutil.copyfile(self.server_cert, cert)
        shutil.copyfile(self.server_key, key)
        os.chmod(key, 0o600)
        scitokens_cfg = run_dir / "scitokens.cfg"
        scitokens_cfg.write_text(scitokens_config(self.issuer))
        return security_directives(cert, key, ca, scitokens_cfg)

    def store_path(self, path: str) -> Path:
        """Where a file published as ``path`` (e.g. ``/store/x.root``) lives on the origin's disk."""
        return self.data_root / path.lstrip("/")

    async def start(self) -> None:
        self._trusted = trust_system_wide(self.ca_cert, f"cmsaf-dev-ca-{self.work_dir.name}")
        origin_dir, cache_dir = self.work_dir / "origin", self.work_dir / "cache"
        for d in (origin_dir, cache_dir, self.data_root / self.export.lstrip("/"), self.cache_root):
            d.mkdir(parents=True, exist_ok=True)
        origin_port, cache_port = free_port(), free_port()
        self.origin = XRootDServer(
            "origin", origin_dir,
            origin_config(origin_port, self.export, self.data_root, origin_dir, self._security(origin_dir)),
            origin_port,
        )
        await self.origin.start()
        token_copy = self._cache_token_copy = cache_dir / "service.token"
        shutil.copyfile(self.cache_token_file, token_copy)
        os.chmod(token_copy, 0o600)
        x509_dir = hashed_ca_dir(self.ca_cert, cache_dir / "certificates")
        self.cache = XRootDServer(
            "xcache", cache_dir,
            cache_config(cache_port, self.export, f"roots://localhost:{origin_port}", self.cache_root, cache_dir,
                         self._security(cache_dir)),
            cache_port,
            env={"BEARER_TOKEN_FILE": str(token_copy), "X509_CERT_DIR": str(x509_dir)},
        )
        _chown_tree(self.data_root)
        _chown_tree(self.cache_root)
        try:
            await self.cache.start()
        except BaseException:
            await self.origin.stop()
            raise

    def replace_cache_token(self, token: str) -> None:
        """Give the cache a fresh service token (it reads the file at each new origin connection)."""
        tmp = self._cache_token_copy.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        _chown_tree(tmp)
        os.replace(tmp, self._cache_token_copy)

    async def stop(self) -> None:
        for server in (self.cache, self.origin):
            if server:
                await server.stop()
        if self._trusted is not None:
            untrust_system_wide(self._trusted)
            self._trusted = None
        shutil.rmtree(self.work_dir, ignore_errors=True)
