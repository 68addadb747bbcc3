"""LocalBackend: each cluster's scheduler and workers are processes on the service's machine.

Processes run as the cluster owner's OS user (the service switches to it, so it runs as root), are
started detached (own session, output to files) so they outlive a service restart, and get an
environment built by :func:`cluster_process_env`, never the service's own (which holds its hub
token and crypt key). Layout under ``state_dir`` (all 0711 up to the owner's part):

- ``<id>/pids/<name>``: the process registry, ``pid started`` (service only, 0700; see
  :func:`process_start`): how
  :meth:`LocalBackend.list_cluster_ids` finds what the backend holds after a restart.
- ``<id>/logs/<name>.log``: the processes' output (service only, 0700; users read it through the API).
- ``<id>/run/``: the owner's, 0700: TLS files, token files, workers' local directories and the
  scheduler's ``addresses.json``. Written while still the service's, handed over last.

Every listener requires the cluster's certificate: the scheduler's TLS and ``wss://`` comms (the
hub's websocket relay; distributed binds websocket listeners on every interface), and the HTTPS
server of the scheduler (dashboard, metrics) and of each worker (``/health``, ``/metrics``) via
:mod:`.local_preload`. The forwarder holds the cluster's certificate; other local users do not.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import psutil
from traitlets import Bool, Callable, Dict, Float, Integer, List, Unicode, default

from spawners.tokenfiles import ensure_token_dir, write_file_atomically, write_token_files
from spawners.tokens import token_filename

from .base import (
    Backend,
    BackendError,
    ClusterObservation,
    ClusterSpec,
    SchedulerInfo,
    SubmittedWorker,
    WorkerObservation,
    WorkerPhase,
)
from ..probe import SchedulerProbe
from .local_preload import ADDRESS_FILE

SCHEDULER = "scheduler"
#: What `dask worker` logs once its scheduler accepted it.
REGISTERED_MARK = "Registered to:"
PRELOAD = "cmsaf_hub.service.backends.local_preload"
SCHEDULER_CLASS = f"{PRELOAD}.ClientCertScheduler"
WORKER_CLASS = f"{PRELOAD}.ClientCertWorker"
#: Directory modes: traversable (not listable) by the owners on the way to their ``run/``.
SHARED_DIR_MODE = 0o711
PRIVATE_DIR_MODE = 0o700
#: The largest ``addresses.json`` the service reads (the owner's processes write it).
MAX_ADDRESS_FILE = 64 * 1024
#: The unit of the start times in ``/proc/<pid>/stat`` (:func:`process_start`), per second.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Every process starts behind this gate: a shell that execs the real command (same pid, same
#: start time) only once the service, having registered the pid, writes a line to its stdin. A
#: service that dies in between closes the pipe, and the shell exits: no process runs unregistered,
#: where no restarted service could find it. ``env -u`` drops what the shell itself exports.
START_GATE = ["/bin/sh", "-c", 'read -r go && exec "$@" </dev/null']
SHELL_VARIABLES = ("PWD", "OLDPWD", "SHLVL", "_")


def gated_command(name: str, cmd: list[str], env: Mapping[str, str]) -> list[str]:
    """``cmd`` behind :data:`START_GATE`, to run with exactly ``env``."""
    unset = [f"--unset={v}" for v in SHELL_VARIABLES if v not in env]
    return [*START_GATE, name, "/usr/bin/env", *unset, *cmd]


@dataclass(frozen=True)
class Account:
    """The OS account a cluster's processes run as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str

    @classmethod
    def from_passwd(cls, entry: pwd.struct_passwd) -> "Account":
        return cls(
            entry.pw_name, entry.pw_uid, entry.pw_gid, tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)),
            entry.pw_dir, entry.pw_shell or "/bin/sh",
        )  # fmt: skip


def cluster_process_env(
    service_env: Mapping[str, str],
    *,
    inherit: Iterable[str],
    account: Account,
    python: str,
    token_dir: str,
    bearer_token_file: str,
    cluster_env: Mapping[str, str],
) -> dict[str, str]:
    """The complete environment of a cluster's scheduler and workers (pure).

    Only the variables named in ``inherit`` come from the service's environment; then the
    cluster's own settings; then what is the owner's: their account, their token files, and the
    chosen Python environment's ``bin`` first on ``PATH`` (``python`` in a task is the workers').
    """
    env = {name: service_env[name] for name in inherit if name in service_env}
    env.update(cluster_env)
    env.update(
        HOME=account.home,
        USER=account.name,
        LOGNAME=account.name,
        SHELL=account.shell,
        PATH=os.pathsep.join(p for p in (os.path.dirname(python), env.get("PATH", os.defpath)) if p),
        CMSAF_TOKEN_DIR=token_dir,
        BEARER_TOKEN_FILE=bearer_token_file,
    )
    return env


def environment_python(image: str | None, default_python: str, environments: Mapping[str, str]) -> str:
    """The interpreter for a cluster: the ``image`` option names one of ``environments`` (pure)."""
    if not image:
        return default_python
    if image not in environments:
        offered = ", ".join(repr(name) for name in sorted(environments)) or "none"
        raise BackendError(f"environment {image!r} is not offered by this facility (offered: {offered})")
    path = environments[image]
    return path if os.path.basename(path).startswith("python") else os.path.join(path, "bin", "python")


def scheduler_command(python: str, run_dir: str, dashboard_prefix: str = "", host: str = "127.0.0.1") -> list[str]:
    """The scheduler's command line (``dask spec``, to use :class:`ClientCertScheduler`)."""
    opts: dict[str, Any] = {
        "host": host,
        "protocol": ["tls", "wss"],
        "port": [0, 0],
        "dashboard": True,
        "dashboard_address": "127.0.0.1:0",
        "preload": [PRELOAD],
        "security": {
            "tls_ca_file": f"{run_dir}/tls.pem",
            "tls_scheduler_cert": f"{run_dir}/tls.pem",
            "tls_scheduler_key": f"{run_dir}/tls.key",
            "require_encryption": True,
        },
    }
    if dashboard_prefix:
        opts["http_prefix"] = dashboard_prefix
    spec = {"cls": SCHEDULER_CLASS, "opts": opts}
    return [python, "-m", "distributed.cli.dask_spec", "--spec", json.dumps(spec, separators=(",", ":"))]


def worker_command(python: str, address: str, name: str, options: dict[str, Any], run_dir: str) -> list[str]:
    """One worker's command line: under a nanny that enforces ``--memory-limit`` (restarts the
    worker past 95 %, distributed's default), its HTTP server on loopback behind the cluster's
    certificate."""
    cores = int(options.get("cores") or 1)
    memory = float(options.get("memory") or 1.0)
    return [
        python, "-m", "distributed.cli.dask_worker", address,
        "--name", name,
        "--nthreads", str(cores),
        "--memory-limit", f"{int(memory * 2**30)}",
        "--nanny",
        "--worker-class", WORKER_CLASS,
        "--no-dashboard",
        "--dashboard-address", "127.0.0.1:0",
        "--host", "127.0.0.1",
        "--local-directory", f"{run_dir}/workers/{name}",
        "--tls-ca-file", f"{run_dir}/tls.pem", "--tls-cert", f"{run_dir}/tls.pem", "--tls-key", f"{run_dir}/tls.key",
    ]  # fmt: skip


def _same_name(hub_username: str) -> str:
    return hub_username


def process_start(pid: int) -> float | None:
    """When ``pid`` started, in seconds after boot (``/proc/<pid>/stat``); None if no such process
    runs (a zombie counts as gone).

    Never psutil's ``create_time``: that adds the boot time as the wall clock now says it, so it
    moves by a second whenever a clock adjustment moves the kernel's ``btime``, and a live process
    would look like another one that reused its pid.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except OSError:
        return None
    fields = stat_line[stat_line.rindex(b")") + 2:].split()  # after the command name, which may hold anything
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19]) / CLOCK_TICKS


def _alive(pid: int, started: float) -> bool:
    """Whether the registered process still runs (pid reuse and zombies count as dead)."""
    return process_start(pid) == started


def _head(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


#: A line that ends a Python traceback: ``ModuleNotFoundError: No module named 'x'``.
_EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)(?:: .*)?")
_CHAINED = ("The above exception was the direct cause", "During handling of the above exception")


def exit_reason(log_tail: str) -> str:
    """Why a process exited, from the end of its log: the root cause of its last traceback (a
    nanny's ``RuntimeError: Nanny failed to start.`` is chained after what really failed), else
    its last line."""
    lines = log_tail.strip().splitlines()
    ends = [i for i, line in enumerate(lines) if _EXCEPTION_LINE.fullmatch(line)]
    if not ends:
        return lines[-1] if lines else ""
    k = len(ends) - 1
    while k > 0 and any(line.startswith(_CHAINED) for line in lines[ends[k - 1] + 1:ends[k]]):
        k -= 1
    return lines[ends[k]]


def _read_owner_file(path: Path, limit: int) -> str | None:
    """A small regular file the owner's processes wrote; None if absent. Never follows a symlink
    nor blocks on a FIFO the owner may have put there instead."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BackendError(f"cannot read the scheduler's {path.name}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise BackendError(f"the scheduler's {path.name} is not a regular file")
        return f.read(limit).decode(errors="replace")


def _parse_addresses(text: str) -> tuple[str, str, int]:
    """``(tls address, wss port, dashboard port)`` from ``addresses.json``, strictly checked."""
    try:
        record = json.loads(text)
        tls_address, wss_address = record["addresses"]
        wss_port = int(wss_address.rsplit(":", 1)[1])
        dashboard_port = record["dashboard_port"]
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        raise BackendError("the scheduler reported unreadable addresses") from None
    if not (isinstance(tls_address, str) and tls_address.startswith("tls://")) or not all(
        isinstance(p, int) and 0 < p < 65536 for p in (wss_port, dashboard_port)
    ):
        raise BackendError("the scheduler reported unusable addresses")
    return tls_address, wss_port, dashboard_port


class LocalBackend(Backend):
    """Runs each cluster's ``dask`` scheduler and workers as local processes of its owner's OS user."""

    state_dir = Unicode(
        help="""Directory holding one subdirectory per cluster: process registry, logs (the
        service's) and ``run/`` (the owner's: TLS files, tokens, workers' directories). Made 0711;
        every parent must be traversable by the owners' OS users.""",
    ).tag(config=True)

    @default("state_dir")
    def _default_state_dir(self) -> str:
        return os.path.abspath("cmsaf-local-clusters")

    python = Unicode(
        sys.executable,
        help="""Python interpreter (with distributed and cmsaf-hub installed) of clusters that pick
        no environment: the users' session environment, so workers have the software their
        notebooks have. The default, the service's own, is the sessions' one in the demo.""",
    ).tag(config=True)

    environments = Dict(
        value_trait=Unicode(),
        help="""Other Python environments users may pick with the ``image`` cluster option (its
        meaning on this backend), name -> interpreter or environment prefix (``<prefix>/bin/python``),
        e.g. ``{"coffea-2025": "/opt/conda/envs/coffea-2025"}``. Offer the names as choices of the
        ``image`` field in ``ClusterOptions.fields``. Each needs distributed and cmsaf-hub.""",
    ).tag(config=True)

    same_user = Bool(
        False,
        help="""Run every cluster as the service's own OS user instead of its owner's. Clusters are
        then NOT isolated: code on one cluster reads every other cluster's keys and tokens and the
        service's files. Only for a single-user machine or a demo run without root; logged as a
        warning at start. Off (the default), the service must run as root to switch users.""",
    ).tag(config=True)

    owner_os_user = Callable(
        help="""Hook mapping a hub username to the OS username the owner's clusters run as,
        ``f(hub_username) -> str``. Default: the same name, as JupyterHub's LocalProcessSpawner
        does for sessions; keep the two mappings the same.""",
    ).tag(config=True)

    @default("owner_os_user")
    def _default_owner_os_user(self):
        return _same_name

    work_dir = Unicode(
        "",
        help="""Directory the workers start in, so that modules beside the owner's notebooks import
        on them: ``{home}`` and ``{username}`` (the OS user) are filled in. Empty: the owner's home
        directory (a local session's notebook directory). A missing directory falls back to the
        cluster's ``run/`` directory, with a warning.""",
    ).tag(config=True)

    inherit_env = List(
        Unicode(),
        ["PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ"],
        help="""The only variables schedulers and workers take from the service's environment
        (which holds the service's hub token and crypt key: never list those). Everything else
        comes from ``CmsafService.cluster_env`` and the owner's account.""",
    ).tag(config=True)

    scheduler_start_timeout = Float(
        60, help="Seconds to wait for a new scheduler to report its addresses before giving up."
    ).tag(config=True)

    stop_grace = Float(
        5, help="Seconds between SIGTERM and SIGKILL when stopping a process."
    ).tag(config=True)

    scheduler_host = Unicode(
        "127.0.0.1",
        help="""Interface the scheduler's TLS listener binds. Loopback suits local workers; when
        HTCondor workers on other machines join a scheduler that runs beside the service
        (``HTCondorBackend.scheduler_placement = "service"``), set an address the execute nodes
        reach, e.g. ``"0.0.0.0"`` (the listener still requires the cluster's certificate). The
        dashboard stays on loopback, reached through the service's forwarder.""",
    ).tag(config=True)

    bearer_token_name = Unicode(
        "xrootd",
        help="""Which of the owner's tokens ``BEARER_TOKEN_FILE`` points at in schedulers and workers
        (WLCG bearer-token discovery: XRootD reads). All tokens are files in ``$CMSAF_TOKEN_DIR``,
        written at start and kept fresh by the service's token push.""",
    ).tag(config=True)

    retire_timeout = Float(
        10, help="Seconds to let the scheduler retire workers (move their results) before they are stopped."
    ).tag(config=True)

    log_tail_bytes = Integer(
        64 * 1024, help="How much of the end of each log file `logs` returns."
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        #: Children started by this service process, reaped so they do not linger as zombies.
        self._children: dict[int, subprocess.Popen] = {}
        self._stopping: set[tuple[str, str]] = set()
        #: Workers whose log showed they registered with their scheduler.
        self._registered: set[tuple[str, str]] = set()

    async def start(self) -> None:
        if self.same_user:
            self.log.warning(
                "LocalBackend.same_user is on: every cluster runs as %s, the service's own OS user. Clusters are "
                "NOT isolated from each other nor from the service (its keys, token and database).",
                pwd.getpwuid(os.geteuid()).pw_name,
            )
        elif os.geteuid() != 0:
            self.log.warning(
                "The cluster service runs as uid %d, not root: it cannot run clusters as their owners' OS users, "
                "so every cluster start will fail. Run it as root, or set LocalBackend.same_user = True to accept "
                "clusters that are NOT isolated from each other.",
                os.geteuid(),
            )
        await self._in_thread(self._make_state_dir)

    def _make_state_dir(self) -> None:
        root = Path(self.state_dir)
        root.mkdir(mode=SHARED_DIR_MODE, parents=True, exist_ok=True)
        os.chmod(root, SHARED_DIR_MODE)
        if self.same_user:
            return
        closed = [str(p) for p in [root, *root.parents] if not os.stat(p).st_mode & stat.S_IXOTH]
        if closed:
            self.log.error(
                "LocalBackend.state_dir %s is below %s, which other users cannot traverse: clusters running as their "
                "owners will not reach their files. Choose a state_dir whose parents are all o+x.", root, closed[0],
            )  # fmt: skip

    # -- helpers (all blocking: called in an executor) ----------------------------------------------

    def _dir(self, cluster_id: str) -> Path:
        if not cluster_id or "/" in cluster_id or cluster_id.startswith("."):
            raise BackendError(f"invalid cluster id {cluster_id!r}")
        return Path(self.state_dir) / cluster_id

    def _run_dir(self, cluster_id: str) -> Path:
        return self._dir(cluster_id) / "run"

    def account(self, owner: str) -> Account:
        """The OS account ``owner``'s clusters run as; a BackendError the owner can act on if none."""
        if self.same_user:
            return Account.from_passwd(pwd.getpwuid(os.geteuid()))
        if os.geteuid() != 0:
            raise BackendError(
                "clusters cannot start: the service is not running as root, so it cannot run them as their owner "
                "(an admin runs it as root, or sets LocalBackend.same_user)"
            )
        name = self.owner_os_user(owner)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise BackendError(
                f"hub user {owner!r} has no OS account {name!r} on the cluster machine; an admin creates it "
                "(clusters run as their owner's OS user)"
            ) from None
        if entry.pw_uid == 0:
            raise BackendError(f"hub user {owner!r} maps to a root account; clusters never run as root")
        return Account.from_passwd(entry)

    def _work_dir(self, account: Account, cluster_id: str) -> str:
        path = self.work_dir.format(home=account.home, username=account.name) if self.work_dir else account.home
        if os.path.isdir(path):
            return path
        self.log.warning("Cluster %s: work directory %s does not exist; workers start in their run directory", cluster_id, path)
        return str(self._run_dir(cluster_id))

    def _spawn(self, cluster_dir: Path, name: str, cmd: list[str], env: dict[str, str], account: Account,
               cwd: str) -> dict[str, Any]:
        """Start one process as ``account``, with exactly ``env``; register it (service-owned)
        before it runs (:data:`START_GATE`)."""
        log_fd = os.open(cluster_dir / "logs" / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        switch: dict[str, Any] = {}
        if account.uid != os.geteuid():
            switch = {"user": account.uid, "group": account.gid, "extra_groups": list(account.groups)}
        with os.fdopen(log_fd, "ab") as log:
            try:
                proc = subprocess.Popen(
                    gated_command(name, cmd, env), cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True, umask=0o077, **switch,
                )  # fmt: skip
            except OSError as e:
                reach = f" (may {account.name} enter {cwd}?)" if switch else ""
                raise BackendError(f"cannot start the {name} process as {account.name}: {e.strerror or e}{reach}") from None
        self._children[proc.pid] = proc
        with proc.stdin:  # closed unopened if registering fails: the gate exits
            started = process_start(proc.pid) or 0.0
            (cluster_dir / "pids" / name).write_text(f"{proc.pid} {started!r}")
            proc.stdin.write(b"go\n")
        return {"pid": proc.pid, "started": started}

    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]

    def _registry(self, cluster_dir: Path) -> dict[str, tuple[int, float]]:
        entries = {}
        for path in (cluster_dir / "pids").glob("*"):
            try:
                pid, started = path.read_text().split()
                entries[path.name] = (int(pid), float(started))
            except (OSError, ValueError):
                continue
        return entries

    def _signal_all(self, procs: list[tuple[int, float]]) -> None:
        """SIGTERM (each process and its children: a nanny's worker), wait up to ``stop_grace``,
        SIGKILL what is left."""
        live = []
        for pid, started in procs:
            if _alive(pid, started):
                try:
                    parent = psutil.Process(pid)
                    live += [parent, *parent.children(recursive=True)]
                except psutil.Error:
                    continue
        for p in live:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, still = psutil.wait_procs(live, timeout=self.stop_grace)  # all at once; reaps our children
        for p in still:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(still, timeout=self.stop_grace)
        self._reap()

    def _env(self, cluster: ClusterSpec, account: Account, python: str) -> dict[str, str]:
        tokens = self._run_dir(cluster.id) / "tokens"
        return cluster_process_env(
            os.environ,
            inherit=self.inherit_env,
            account=account,
            python=python,
            token_dir=str(tokens),
            bearer_token_file=str(tokens / token_filename(self.bearer_token_name)),
            cluster_env=cluster.env,
        )

    def _python(self, cluster: ClusterSpec) -> str:
        return environment_python(cluster.options.get("image"), self.python, self.environments)

    def _prepare_dir(self, cluster: ClusterSpec, account: Account) -> Path:
        """The cluster's directories; ``run/`` rebuilt from scratch and handed to the owner last, so
        nothing an earlier process of the cluster planted there survives or races the writes."""
        d = self._dir(cluster.id)
        if not d.parent.is_dir():
            self._make_state_dir()
        d.mkdir(mode=SHARED_DIR_MODE, exist_ok=True)
        os.chmod(d, SHARED_DIR_MODE)
        for sub in ("logs", "pids"):
            (d / sub).mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
            os.chmod(d / sub, PRIVATE_DIR_MODE)
        run = d / "run"
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(mode=PRIVATE_DIR_MODE)
        (run / "workers").mkdir(mode=PRIVATE_DIR_MODE)
        tokens = run / "tokens"
        ensure_token_dir(str(tokens))
        write_token_files(str(tokens), {token_filename(name): value for name, value in cluster.tokens.items()})
        write_file_atomically(str(run / "tls.pem"), cluster.tls["cert"])
        write_file_atomically(str(run / "tls.key"), cluster.tls["key"])
        if account.uid != os.geteuid():
            for path in [*run.rglob("*"), run]:  # run/ itself last
                os.lchown(path, account.uid, account.gid)
        return d

    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # -- Backend interface --------------------------------------------------------------------------

    async def start_scheduler(self, cluster: ClusterSpec) -> SchedulerInfo:
        if not cluster.tls.get("cert") or not cluster.tls.get("key"):
            raise BackendError("the cluster has no TLS credentials")
        account = await self._in_thread(self.account, cluster.owner)
        python = self._python(cluster)
        d = await self._in_thread(self._prepare_dir, cluster, account)
        run = str(d / "run")
        proc_state = await self._in_thread(
            self._spawn, d, SCHEDULER, scheduler_command(python, run, cluster.dashboard_prefix, self.scheduler_host),
            self._env(cluster, account, python), account, run,
        )
        deadline = time.monotonic() + self.scheduler_start_timeout
        address_file = d / "run" / ADDRESS_FILE
        while (text := await self._in_thread(_read_owner_file, address_file, MAX_ADDRESS_FILE)) is None:
            if not _alive(proc_state["pid"], proc_state["started"]):
                self._reap()
                last = _tail(d / "logs" / f"{SCHEDULER}.log", 400).strip().splitlines()[-1:] or ["no output"]
                raise BackendError(f"the scheduler exited while starting: {last[0]}", retryable=True)
            if time.monotonic() > deadline:
                await self._in_thread(self._signal_all, [(proc_state["pid"], proc_state["started"])])
                raise BackendError(
                    f"the scheduler did not start within {self.scheduler_start_timeout:g} s", retryable=True
                )
            await asyncio.sleep(0.05)
        tls_address, wss_port, dashboard_port = _parse_addresses(text)
        return SchedulerInfo(
            address=tls_address,
            # HTTPS requiring the cluster's certificate (local_preload.ClientCertScheduler)
            dashboard_address=f"https://127.0.0.1:{dashboard_port}",
            backend_state={
                "scheduler": proc_state,
                "dir": str(d),
                "address": tls_address,
                # the websocket listener binds every interface; reach it on loopback
                "ws_address": f"wss://127.0.0.1:{wss_port}",
            },
        )

    def _submit_sync(self, cluster: ClusterSpec, count: int) -> list[SubmittedWorker]:
        d = self._dir(cluster.id)
        address = cluster.backend_state.get("address")
        if not address:
            raise BackendError("the cluster's scheduler address is unknown")
        account = self.account(cluster.owner)
        python = self._python(cluster)
        env = self._env(cluster, account, python)
        cwd = self._work_dir(account, cluster.id)
        submitted = []
        for _ in range(count):
            name = f"{cluster.id[:8]}-{secrets.token_hex(4)}"
            cmd = worker_command(python, address, name, cluster.options, str(d / "run"))
            submitted.append(SubmittedWorker(name, self._spawn(d, name, cmd, env, account, cwd)))
        return submitted

    async def submit_workers(self, cluster: ClusterSpec, count: int) -> list[SubmittedWorker]:
        return await self._in_thread(self._submit_sync, cluster, count)

    def _stop_workers_sync(self, cluster: ClusterSpec, workers: dict[str, dict[str, Any]]) -> None:
        d = self._dir(cluster.id)
        registry = self._registry(d)
        procs = []
        for name, state in workers.items():
            self._stopping.add((cluster.id, name))
            if "pid" in state:
                procs.append((state["pid"], state.get("started", 0.0)))
            elif name in registry and name != SCHEDULER:
                procs.append(registry[name])
        self._signal_all(procs)
        for name in workers:
            (d / "pids" / name).unlink(missing_ok=True)
            shutil.rmtree(d / "run" / "workers" / name, ignore_errors=True)

    async def stop_workers(self, cluster: ClusterSpec, workers: dict[str, dict[str, Any]]) -> None:
        address = cluster.backend_state.get("address")
        if address and cluster.tls.get("key"):
            # graceful first: the scheduler moves the workers' results to the others
            try:
                await SchedulerProbe(timeout=self.retire_timeout).retire_workers(
                    address, cluster.tls["cert"], cluster.tls["key"], list(workers)
                )
            except (OSError, asyncio.TimeoutError) as e:
                self.log.warning("Cluster %s: retiring workers failed, stopping them anyway: %s", cluster.id, e)
        await self._in_thread(self._stop_workers_sync, cluster, workers)

    def _poll_sync(self, clusters: list[ClusterSpec]) -> dict[str, ClusterObservation]:
        self._reap()
        observations = {}
        for cluster in clusters:
            d = self._dir(cluster.id)
            sched = cluster.backend_state.get("scheduler") or {}
            alive = bool(sched) and _alive(sched["pid"], sched["started"])
            workers = {}
            for name, state in (cluster.backend_state.get("workers") or {}).items():
                if "pid" in state and _alive(state["pid"], state.get("started", 0.0)):
                    workers[name] = WorkerObservation(name, self._worker_phase(cluster.id, name))
                elif (cluster.id, name) in self._stopping:
                    workers[name] = WorkerObservation(name, WorkerPhase.EXITED)
                else:
                    reason = exit_reason(_tail(d / "logs" / f"{name}.log", 20_000))
                    detail = f": {reason}" if reason else ""
                    workers[name] = WorkerObservation(name, WorkerPhase.FAILED, f"worker process exited{detail}")
                    self._registered.discard((cluster.id, name))
                    # the dead process leaves the registry (its log stays for `logs`)
                    (d / "pids" / name).unlink(missing_ok=True)
                    shutil.rmtree(d / "run" / "workers" / name, ignore_errors=True)
            # processes the service does not list (e.g. submitted just before a service crash)
            for name, (pid, started) in self._registry(d).items():
                if name == SCHEDULER or name in workers:
                    continue
                if _alive(pid, started):
                    workers[name] = WorkerObservation(name, WorkerPhase.RUNNING, "not known to the service")
                else:  # e.g. its gate closed unopened by a service that died registering it
                    (d / "pids" / name).unlink(missing_ok=True)
            observations[cluster.id] = ClusterObservation(
                scheduler_alive=alive,
                scheduler_reason=None if alive else "the scheduler process is gone",
                workers=workers,
            )
        return observations

    def _worker_phase(self, cluster_id: str, name: str) -> WorkerPhase:
        """A live worker process is QUEUED until its log says it registered with the scheduler."""
        key = (cluster_id, name)
        if key not in self._registered:
            if REGISTERED_MARK not in _head(self._dir(cluster_id) / "logs" / f"{name}.log", self.log_tail_bytes):
                return WorkerPhase.QUEUED
            self._registered.add(key)
        return WorkerPhase.RUNNING

    async def poll(self, clusters: list[ClusterSpec]) -> dict[str, ClusterObservation]:
        return await self._in_thread(self._poll_sync, clusters)

    def _stop_cluster_sync(self, cluster_id: str, remove: bool) -> None:
        d = self._dir(cluster_id)
        if not d.exists():
            return
        registry = self._registry(d)
        self._stopping.update((cluster_id, name) for name in registry)
        self._signal_all(list(registry.values()))
        if remove:
            shutil.rmtree(d, ignore_errors=True)
            self._stopping = {k for k in self._stopping if k[0] != cluster_id}
            self._registered = {k for k in self._registered if k[0] != cluster_id}
        else:
            for name in registry:
                (d / "pids" / name).unlink(missing_ok=True)
            (d / "run" / "tls.key").unlink(missing_ok=True)
            shutil.rmtree(d / "run" / "workers", ignore_errors=True)

    async def stop_cluster(self, cluster: ClusterSpec) -> None:
        # logs stay until the service forgets the cluster (remove_cluster_resources)
        await self._in_thread(self._stop_cluster_sync, cluster.id, False)

    def _logs_sync(self, cluster_id: str) -> dict[str, str]:
        logs_dir = self._dir(cluster_id) / "logs"
        if not logs_dir.exists():
            return {}
        return {p.stem: _tail(p, self.log_tail_bytes) for p in sorted(logs_dir.glob("*.log"))}

    async def logs(self, cluster: ClusterSpec) -> dict[str, str]:
        return await self._in_thread(self._logs_sync, cluster.id)

    def _list_sync(self) -> set[str]:
        root = Path(self.state_dir)
        if not root.exists():
            return set()
        return {d.name for d in root.iterdir() if d.is_dir() and (d / "pids").exists()}

    async def list_cluster_ids(self) -> set[str]:
        return await self._in_thread(self._list_sync)

    async def remove_cluster_resources(self, cluster_id: str) -> None:
        await self._in_thread(self._stop_cluster_sync, cluster_id, True)

    async def remove_all_clusters(self) -> set[str]:
        """Stop and remove every cluster under ``state_dir`` (decommissioning, test teardown).

        Clusters outlive the service by design, so whoever discards a whole deployment calls this.
        """
        cluster_ids = await self.list_cluster_ids()
        for cluster_id in cluster_ids:
            await self.remove_cluster_resources(cluster_id)
        return cluster_ids
