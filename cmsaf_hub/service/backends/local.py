"""LocalBackend: each cluster's scheduler and workers are processes on the service's machine.

Processes are started detached (own session, output to files) so they outlive a service restart.
Every process is registered in ``<state_dir>/<cluster id>/pids/<name>`` as ``pid create_time``;
that registry (not the database) is how :meth:`list_cluster_ids` finds what the backend holds.
The scheduler listens on TLS (workers, clients) and on a ``wss://`` listener (the hub's websocket
relay) with the cluster's certificate required on both: distributed binds websocket listeners on
every interface, so a plain ``ws://`` one would be an unauthenticated door into the cluster.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from traitlets import Float, Integer, Unicode, default

from spawners.tokenfiles import ensure_token_dir, write_token_files
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


def scheduler_command(python: str, dashboard_prefix: str = "", host: str = "127.0.0.1") -> list[str]:
    """The scheduler's command line, run in the cluster's directory."""
    prefix = ["--dashboard-prefix", dashboard_prefix] if dashboard_prefix else []
    return [
        python, "-m", "distributed.cli.dask_scheduler", *prefix,
        "--host", host,
        "--protocol", "tls,wss",
        "--port", "0,0",
        "--dashboard-address", "127.0.0.1:0",
        "--tls-ca-file", "tls.pem", "--tls-cert", "tls.pem", "--tls-key", "tls.key",
        "--preload", "cmsaf_hub.service.backends.local_preload",
    ]  # fmt: skip


def worker_command(python: str, address: str, name: str, options: dict[str, Any]) -> list[str]:
    """One worker's command line (no nanny: a dead worker is the service's to replace)."""
    cores = int(options.get("cores") or 1)
    memory = float(options.get("memory") or 1.0)
    return [
        python, "-m", "distributed.cli.dask_worker", address,
        "--name", name,
        "--nthreads", str(cores),
        "--memory-limit", f"{int(memory * 2**30)}",
        "--no-nanny",
        "--no-dashboard",
        "--host", "127.0.0.1",
        "--local-directory", f"workers/{name}",
        "--tls-ca-file", "tls.pem", "--tls-cert", "tls.pem", "--tls-key", "tls.key",
    ]  # fmt: skip


def _alive(pid: int, create_time: float) -> bool:
    """Whether the registered process still runs (pid reuse and zombies count as dead)."""
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


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


class LocalBackend(Backend):
    """Runs ``dask scheduler`` and ``dask worker`` as detached local processes."""

    state_dir = Unicode(
        help="Directory holding one subdirectory per cluster: TLS files, logs, the process registry."
    ).tag(config=True)

    @default("state_dir")
    def _default_state_dir(self) -> str:
        return os.path.abspath("cmsaf-local-clusters")

    python = Unicode(
        sys.executable, help="Python interpreter (with distributed installed) that runs schedulers and workers."
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

    # -- helpers (all blocking: called in an executor) ----------------------------------------------

    def _dir(self, cluster_id: str) -> Path:
        if not cluster_id or "/" in cluster_id or cluster_id.startswith("."):
            raise BackendError(f"invalid cluster id {cluster_id!r}")
        return Path(self.state_dir) / cluster_id

    def _spawn(self, cluster_dir: Path, name: str, cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
        log_path = cluster_dir / "logs" / f"{name}.log"
        full_env = {**os.environ, **env}
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd, cwd=cluster_dir, env=full_env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self._children[proc.pid] = proc
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            create_time = 0.0
        (cluster_dir / "pids" / name).write_text(f"{proc.pid} {create_time}")
        return {"pid": proc.pid, "create_time": create_time}

    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]

    def _registry(self, cluster_dir: Path) -> dict[str, tuple[int, float]]:
        entries = {}
        for path in (cluster_dir / "pids").glob("*"):
            try:
                pid, create_time = path.read_text().split()
                entries[path.name] = (int(pid), float(create_time))
            except (OSError, ValueError):
                continue
        return entries

    def _signal_all(self, procs: list[tuple[int, float]]) -> None:
        """SIGTERM, wait up to ``stop_grace``, SIGKILL what is left."""
        live = [psutil.Process(pid) for pid, ct in procs if _alive(pid, ct)]
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

    def _token_env(self, d: Path) -> dict[str, str]:
        """Where the cluster's processes find the owner's tokens (one directory shared by all)."""
        tokens = d / "tokens"
        return {"CMSAF_TOKEN_DIR": str(tokens), "BEARER_TOKEN_FILE": str(tokens / token_filename(self.bearer_token_name))}

    def _env(self, cluster: ClusterSpec) -> dict[str, str]:
        return {**self._token_env(self._dir(cluster.id)), **cluster.env}

    def _prepare_dir(self, cluster: ClusterSpec) -> Path:
        d = self._dir(cluster.id)
        for sub in ("logs", "pids", "workers"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        token_dir = self._token_env(d)["CMSAF_TOKEN_DIR"]
        ensure_token_dir(token_dir)
        write_token_files(token_dir, {token_filename(name): value for name, value in cluster.tokens.items()})
        (d / "tls.pem").write_text(cluster.tls["cert"])
        key_path = d / "tls.key"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(cluster.tls["key"])
        (d / ADDRESS_FILE).unlink(missing_ok=True)
        return d

    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # -- Backend interface --------------------------------------------------------------------------

    async def start_scheduler(self, cluster: ClusterSpec) -> SchedulerInfo:
        if not cluster.tls.get("cert") or not cluster.tls.get("key"):
            raise BackendError("the cluster has no TLS credentials")
        d = await self._in_thread(self._prepare_dir, cluster)
        proc_state = await self._in_thread(
            self._spawn, d, SCHEDULER, scheduler_command(self.python, cluster.dashboard_prefix, self.scheduler_host),
            self._env(cluster),
        )
        deadline = time.monotonic() + self.scheduler_start_timeout
        address_file = d / ADDRESS_FILE
        while not address_file.exists():
            if not _alive(proc_state["pid"], proc_state["create_time"]):
                self._reap()
                last = _tail(d / "logs" / f"{SCHEDULER}.log", 400).strip().splitlines()[-1:] or ["no output"]
                raise BackendError(f"the scheduler exited while starting: {last[0]}", retryable=True)
            if time.monotonic() > deadline:
                await self._in_thread(self._signal_all, [(proc_state["pid"], proc_state["create_time"])])
                raise BackendError(
                    f"the scheduler did not start within {self.scheduler_start_timeout:g} s", retryable=True
                )
            await asyncio.sleep(0.05)
        record = json.loads(await self._in_thread(address_file.read_text))
        tls_address, wss_address = record["addresses"]
        # the websocket listener binds every interface; reach it on loopback
        wss_address = "wss://127.0.0.1:" + wss_address.rsplit(":", 1)[1]
        return SchedulerInfo(
            address=tls_address,
            dashboard_address=f"http://127.0.0.1:{record['dashboard_port']}",
            backend_state={
                "scheduler": proc_state,
                "dir": str(d),
                "address": tls_address,
                "ws_address": wss_address,
            },
        )

    def _submit_sync(self, cluster: ClusterSpec, count: int) -> list[SubmittedWorker]:
        d = self._dir(cluster.id)
        address = cluster.backend_state.get("address")
        if not address:
            raise BackendError("the cluster's scheduler address is unknown")
        submitted = []
        for _ in range(count):
            name = f"{cluster.id[:8]}-{secrets.token_hex(4)}"
            cmd = worker_command(self.python, address, name, cluster.options)
            submitted.append(SubmittedWorker(name, self._spawn(d, name, cmd, self._env(cluster))))
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
                procs.append((state["pid"], state.get("create_time", 0.0)))
            elif name in registry and name != SCHEDULER:
                procs.append(registry[name])
        self._signal_all(procs)
        for name in workers:
            (d / "pids" / name).unlink(missing_ok=True)
            shutil.rmtree(d / "workers" / name, ignore_errors=True)

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
            sched = cluster.backend_state.get("scheduler") or {}
            alive = bool(sched) and _alive(sched["pid"], sched["create_time"])
            workers = {}
            for name, state in (cluster.backend_state.get("workers") or {}).items():
                if "pid" in state and _alive(state["pid"], state.get("create_time", 0.0)):
                    workers[name] = WorkerObservation(name, self._worker_phase(cluster.id, name))
                elif (cluster.id, name) in self._stopping:
                    workers[name] = WorkerObservation(name, WorkerPhase.EXITED)
                else:
                    d = self._dir(cluster.id)
                    last = _tail(d / "logs" / f"{name}.log", 300).strip().splitlines()
                    detail = f": {last[-1]}" if last else ""
                    workers[name] = WorkerObservation(name, WorkerPhase.FAILED, f"worker process exited{detail}")
                    self._registered.discard((cluster.id, name))
                    # the dead process leaves the registry (its log stays for `logs`)
                    (d / "pids" / name).unlink(missing_ok=True)
                    shutil.rmtree(d / "workers" / name, ignore_errors=True)
            # processes the service does not list (e.g. submitted just before a service crash)
            for name, (pid, create_time) in self._registry(self._dir(cluster.id)).items():
                if name != SCHEDULER and name not in workers and _alive(pid, create_time):
                    workers[name] = WorkerObservation(name, WorkerPhase.RUNNING, "not known to the service")
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
            (d / "tls.key").unlink(missing_ok=True)
            shutil.rmtree(d / "workers", ignore_errors=True)

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
