"""A personal HTCondor pool with SciTokens authentication against the dev IAM (tests and benchmarks).

Runs wherever ``condor_master`` is on PATH (as root: the pool runs jobs as the mapped local users);
:func:`skip_reason` says why not otherwise. The release directory is the parent of the ``sbin/``
holding ``condor_master`` (HTCondor installed anywhere, 25.x). The pool (collector, negotiator,
schedd, startd on 127.0.0.1) lives in a temporary directory; the schedd proves itself with the dev
PKI's host certificate and maps ``<issuer>,<sub>`` of the dev IAM's users to local users through a
mapfile written before the daemons start (they read it once). The schedd fetches the issuer's keys
with the system trust store, so the dev CA is installed there while the pool runs (docs/htcondor.md).

Users' ``condor`` tokens are obtained the way the hub obtains them: a confidential client logs the
user in through the dev IAM's real login form (authorization code with PKCE), then exchanges the
access token (RFC 8693) for one with the WLCG audience and the compute scopes the mapping expects.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlparse

import httpx

from authenticators.exchange import build_exchange_params, parse_exchange_specs
from devstack.iam import DEFAULT_USERS_FILE, DevIAM
from devstack.login import FormParser
from devstack.pki import ensure_dev_pki, trust_system_wide, untrust_system_wide

CLIENT_ID = "htcondor-it"
REDIRECT_URI = "http://127.0.0.1:9/callback"  # never contacted: the code is read from the redirect
CONDOR_EXCHANGE = {"condor": {"audience": "https://wlcg.cern.ch/jwt/v1/any",
                              "scope": "compute.read compute.create compute.modify compute.cancel"}}


def client_registration() -> dict:
    """What to pass to ``DevIAM(clients=[...])``."""
    return {
        "client_id": CLIENT_ID,
        "client_secret": secrets.token_urlsafe(24),
        "redirect_uris": [REDIRECT_URI],
        "grant_types": ["authorization_code", "urn:ietf:params:oauth:grant-type:token-exchange"],
    }


async def condor_token(iam, username: str) -> str:
    """A fresh exchanged condor token for ``username`` (password ``<name>-password``)."""
    client = next(c for c in iam.clients if c["client_id"] == CLIENT_ID)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    tls = ssl.create_default_context(cafile=str(iam.ca_cert))
    async with httpx.AsyncClient(verify=tls, timeout=30) as http:
        response = await http.get(urljoin(iam.issuer, "authorize"), params={
            "client_id": CLIENT_ID, "response_type": "code", "scope": "openid", "redirect_uri": REDIRECT_URI,
            "state": secrets.token_urlsafe(8), "code_challenge": challenge, "code_challenge_method": "S256"})
        for _ in range(10):
            if response.is_redirect:
                location = urljoin(str(response.url), response.headers["location"])
                if location.startswith(REDIRECT_URI):
                    code = parse_qs(urlparse(location).query)["code"][0]
                    break
                response = await http.get(location)
                continue
            form = FormParser()
            form.feed(response.text)
            if form.action is None:
                raise AssertionError(f"dev IAM login for {username} stopped at {response.url}: {response.status_code}")
            form.fields.update(login=username, password=iam.user(username)["password"])
            response = await http.post(urljoin(str(response.url), form.action), data=form.fields)
        else:
            raise AssertionError(f"dev IAM login for {username} did not finish")
        auth = (CLIENT_ID, client["client_secret"])
        tokens = await http.post(urljoin(iam.issuer, "token"), auth=auth, data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier})
        tokens.raise_for_status()
        spec = parse_exchange_specs(CONDOR_EXCHANGE)["condor"]
        exchanged = await http.post(urljoin(iam.issuer, "token"), auth=auth,
                                    data=build_exchange_params(tokens.json()["access_token"], spec, {}))
        exchanged.raise_for_status()
        return exchanged.json()["access_token"]


#: Hub users the tests submit as; ``cmsafsvc`` is the service's read-only (and orphan-removing) identity.
POOL_USERS = ["alice", "bob", "cmsafsvc"]
POOL_START_TIMEOUT = 120
#: With an "@" the name is taken as is (otherwise HTCondor appends "@<host name>").
SCHEDD_NAME = "cmsaf-test-schedd@cmsaf.test"


def release_dir() -> Path | None:
    """HTCondor's install prefix: the parent of the ``sbin/`` holding ``condor_master`` on PATH."""
    master = shutil.which("condor_master")
    return Path(master).resolve().parent.parent if master else None


def skip_reason() -> str | None:
    if shutil.which("condor_master") is None:
        return "condor_master is not on PATH: no HTCondor pool can be started here"
    if os.geteuid() != 0:
        return "the personal HTCondor pool must run as root (it runs jobs as alice and bob)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def users_file(target: Path) -> Path:
    """The dev IAM's users plus the service identity (a /cms member, so it gets compute scopes)."""
    data = json.loads(DEFAULT_USERS_FILE.read_text())
    data["users"].append({"username": "cmsafsvc", "password": "cmsafsvc-password",
                          "sub": "c0ffee00-0000-4000-8000-00000000c0de", "name": "cmsaf service",
                          "given_name": "cmsaf", "family_name": "service", "email": "svc@cms-af.example",
                          "groups": ["/cms"]})
    target.write_text(json.dumps(data))
    return target


def mapfile_lines(issuer: str, subs: dict[str, str]) -> str:
    """SciTokens lines of the CERTIFICATE_MAPFILE: ``<issuer>,<sub>`` -> local user."""
    escaped = re.escape(issuer).replace("/", r"\/")
    return "".join(f"SCITOKENS /^{escaped},{re.escape(sub)}$/ {user}\n" for user, sub in subs.items())


def condor_config(local: Path, *, port: int, cert: Path, key: Path, mapfile: Path, release: Path) -> str:
    """The pool's whole configuration (no other file is read: CONDOR_CONFIG points at it)."""
    return f"""
RELEASE_DIR = {release}
BIN = $(RELEASE_DIR)/bin
SBIN = $(RELEASE_DIR)/sbin
LIB = $(RELEASE_DIR)/lib
LIBEXEC = $(RELEASE_DIR)/libexec
LOCAL_DIR = {local}
LOG = $(LOCAL_DIR)/log
SPOOL = $(LOCAL_DIR)/spool
EXECUTE = $(LOCAL_DIR)/execute
LOCK = $(LOCAL_DIR)/lock
RUN = $(LOCAL_DIR)/run
DAEMON_LIST = MASTER, COLLECTOR, NEGOTIATOR, SCHEDD, STARTD
CONDOR_HOST = 127.0.0.1
COLLECTOR_HOST = 127.0.0.1:{port}
NETWORK_INTERFACE = 127.0.0.1
USE_SHARED_PORT = False
STARTD_DETECT_GPUS = false
UID_DOMAIN = cmsaf.test
TRUST_UID_DOMAIN = True
SCHEDD_NAME = {SCHEDD_NAME}
NUM_CPUS = 4
MEMORY = 8192
NUM_SLOTS = 1
NUM_SLOTS_TYPE_1 = 1
SLOT_TYPE_1 = 100%
SLOT_TYPE_1_PARTITIONABLE = True
START = True
SUSPEND = False
PREEMPT = False
KILL = False
SiteName = "T2_TEST"
STARTD_ATTRS = $(STARTD_ATTRS) SiteName
MASTER_BACKOFF_CONSTANT = 1
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_CYCLE_DELAY = 1
SCHEDD_INTERVAL = 2
UPDATE_INTERVAL = 2
SCHEDD_MIN_INTERVAL = 1
STARTER_UPDATE_INTERVAL = 2
SEC_DEFAULT_AUTHENTICATION_METHODS = FS, SCITOKENS
SEC_CLIENT_AUTHENTICATION_METHODS = FS, SCITOKENS
AUTH_SSL_SERVER_CERTFILE = {cert}
AUTH_SSL_SERVER_KEYFILE = {key}
CERTIFICATE_MAPFILE = {mapfile}
CERTIFICATE_MAPFILE_ASSUME_HASH_KEYS = True
ALLOW_READ = *
ALLOW_WRITE = *
ALLOW_DAEMON = *
ALLOW_NEGOTIATOR = *
ALLOW_ADMINISTRATOR = root@*
QUEUE_SUPER_USERS = root, condor, cmsafsvc
ENABLE_CHIRP = True
"""


def ensure_local_users(users: list[str]) -> list[str]:
    """Create the local accounts the mapfile names; returns those created here."""
    created = []
    for user in users:
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", user], check=True)
            created.append(user)
    return created


def ensure_system_user(name: str) -> bool:
    """Create a system account if missing; True when created here."""
    try:
        pwd.getpwnam(name)
        return False
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
        return True


def open_path_to(target: Path) -> list[tuple[Path, int]]:
    """Let job owners reach ``target`` (e.g. a Python under /root): add o+x on directories above it.

    Returns the (directory, old mode) pairs changed, to restore afterwards.
    """
    changed = []
    for directory in reversed(Path(target).resolve().parents):
        mode = directory.stat().st_mode & 0o7777
        if not mode & 0o001:
            os.chmod(directory, mode | 0o001)
            changed.append((directory, mode))
    return changed


@dataclass
class Pool:
    """A running personal pool and how clients reach it."""

    iam: DevIAM
    local_dir: Path
    schedd_name: str
    condor_config: dict[str, str]
    service_token_file: Path
    env: dict[str, str] = field(default_factory=dict)
    #: the condor_master this pool started (its daemons are its children)
    master_pid: int | None = None

    async def token(self, user: str) -> str:
        return await condor_token(self.iam, user)

    async def refresh_service_token(self) -> Path:
        """Write a fresh token of the service identity (tokens here live seconds, not hours)."""
        token = await self.token("cmsafsvc")
        tmp = self.service_token_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        os.replace(tmp, self.service_token_file)
        return self.service_token_file

    def schedd_started(self) -> int | None:
        """The schedd's ``DaemonStartTime`` as the collector advertises it (None while it is away)."""
        probe = ("import htcondor2\n"
                 f"ads = htcondor2.Collector().query(htcondor2.AdType.Schedd, 'Name == \"{self.schedd_name}\"',"
                 " ['DaemonStartTime'])\n"
                 "print(ads[0].get('DaemonStartTime', '') if ads else '')\n")
        out = subprocess.run([sys.executable, "-c", probe], env=self.env, capture_output=True, text=True).stdout.strip()
        return int(out) if out.isdigit() else None

    def _child_pid(self, program: str) -> int | None:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if int(fields[1]) == self.master_pid and (entry / "comm").read_text().strip() == program:
                        return int(entry.name)
        return None

    def restart_schedd(self, timeout: float = POOL_START_TIMEOUT) -> None:
        """Kill the schedd (a crash: running jobs keep running under their leases); its master starts
        a new one. Returns once the new schedd is advertised."""
        before = self.schedd_started()
        pid = self._child_pid("condor_schedd")
        if pid is None:
            raise RuntimeError("the pool's condor_schedd process was not found")
        os.kill(pid, 9)
        deadline = time.monotonic() + timeout
        while (now := self.schedd_started()) is None or now == before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the schedd did not come back within {timeout:.0f} s")
            time.sleep(0.5)


def _wait_for_schedd(env: dict[str, str], name: str) -> None:
    """Ask the collector (through the bindings, in a child) until the schedd and startd are there."""
    probe = (
        "import htcondor2, sys\n"
        "c = htcondor2.Collector()\n"
        f"s = c.query(htcondor2.AdType.Schedd, 'Name == \"{name}\"', ['Name'])\n"
        "m = c.query(htcondor2.AdType.Startd, 'true', ['Name'])\n"
        "sys.exit(0 if s and m else 1)\n"
    )
    deadline = time.monotonic() + POOL_START_TIMEOUT
    while time.monotonic() < deadline:
        if subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode == 0:
            return
        time.sleep(1)
    raise RuntimeError(f"the personal pool's schedd {name} did not appear in {POOL_START_TIMEOUT} s")


@contextlib.contextmanager
def personal_pool(token_lifetime: int = 30) -> Iterator[Pool]:
    """Start the pool (and its dev IAM) in a temporary directory; stop and clean everything after."""
    work = Path(tempfile.mkdtemp(prefix="cmsaf-condor-pool-"))
    os.chmod(work, 0o755)  # job owners must traverse to their sandboxes
    iam = DevIAM(work / "iam", users_file=users_file(work / "users.json"), clients=[client_registration()],
                 access_token_lifetime=token_lifetime)
    iam.start_blocking()
    created, ca_link, master, opened = [], None, None, []
    try:
        ca_link = trust_system_wide(iam.ca_cert, "cmsaf-integration-dev-ca")
        opened = open_path_to(Path(sys.executable)) + open_path_to(Path(__file__))  # jobs run our Python
        created = ensure_local_users(POOL_USERS)
        if ensure_system_user("condor"):  # root daemons do their own bookkeeping as "condor"
            created.append("condor")
        condor = pwd.getpwnam("condor")
        local = work / "condor"
        for sub in ("log", "spool", "execute", "lock", "run"):
            (local / sub).mkdir(parents=True)
            # EXECUTE too: owned by root, the startd advertises a slot with 0 cores, memory and disk.
            os.chown(local / sub, condor.pw_uid, condor.pw_gid)
        os.chmod(local / "execute", 0o755)
        pki = ensure_dev_pki(iam.state_dir)  # the same CA and host certificate the dev IAM serves
        host_cert, host_key = local / "host.pem", local / "host-key.pem"
        for source, target in ((pki.server_cert, host_cert), (pki.server_key, host_key)):
            shutil.copy(source, target)
            os.chown(target, condor.pw_uid, condor.pw_gid)
            os.chmod(target, 0o600)
        mapfile = local / "mapfile"
        mapfile.write_text(mapfile_lines(iam.issuer, {u: iam.user(u)["sub"] for u in POOL_USERS}))
        config_path = local / "condor_config"
        port = free_port()
        config_path.write_text(condor_config(local, port=port, cert=host_cert, key=host_key,
                                             mapfile=mapfile, release=release_dir()))
        server_env = {**os.environ, "CONDOR_CONFIG": str(config_path)}
        master = subprocess.Popen(["condor_master", "-f"], env=server_env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_for_schedd(server_env, SCHEDD_NAME)
        client_config = {
            "COLLECTOR_HOST": f"127.0.0.1:{port}",
            "SEC_CLIENT_AUTHENTICATION_METHODS": "SCITOKENS",
            "AUTH_SSL_CLIENT_CAFILE": str(iam.ca_cert),
        }
        yield Pool(iam=iam, local_dir=local, schedd_name=SCHEDD_NAME, condor_config=client_config,
                   service_token_file=work / "cmsafsvc.token", env=server_env, master_pid=master.pid)
    finally:
        if master is not None:
            master.terminate()
            try:
                master.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(master.pid, 9)
                master.wait()
        iam.stop_blocking()
        if ca_link is not None:
            untrust_system_wide(ca_link)
        for user in created:
            subprocess.run(["userdel", user], capture_output=True)
        for directory, mode in reversed(opened):
            os.chmod(directory, mode)
        shutil.rmtree(work, ignore_errors=True)
