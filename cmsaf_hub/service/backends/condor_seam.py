"""The one seam between cmsaf-hub and HTCondor: ``htcondor2`` calls in per-identity processes.

Why processes: the ``htcondor2`` bindings keep security configuration and negotiated security
sessions per *process*. Switching ``SCITOKENS_FILE`` from alice's token to bob's inside one process
still submits as alice (the schedd reuses alice's session; see docs/htcondor.md). So every identity
gets its own worker process that is configured, from birth, with that identity's token file and never
sees another token. :class:`IdentityProcesses` routes each call to its identity's process, and the
process refuses calls addressed to anyone else. A refreshed token for the same identity replaces the
file in place (new authentications read it; a cached session is still that same user's).

The bindings block, so calls never run on the event loop: each process is a separate
``python -m cmsaf_hub.service.backends.condor_seam`` program (born with its identity's environment, sharing
no memory with the service) that the service talks to over a pipe.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import os
import pickle
import shutil
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import BackendError

#: The identity used for reads covering every user's jobs (bulk poll, restart listing), when configured.
SERVICE_IDENTITY = "@service"


class SeamError(Exception):
    """An HTCondor call failed. ``kind`` is unreachable | auth | rejected | error."""

    def __init__(self, kind: str, message: str):
        super().__init__(kind, message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message


def classify_error(message: str) -> str:
    """Map an HTCondor error message to the kind the backend reacts to."""
    text = message.lower()
    if "authenticat" in text or "permission denied" in text or "not authorized" in text:
        return "auth"
    if any(w in text for w in ("connect", "communication", "locate", "timed out", "timeout")):
        return "unreachable"
    if "submit" in text or "invalid" in text or "error in submit" in text:
        return "rejected"
    return "error"


def seam_error(action: str, error: SeamError) -> BackendError:
    """A user-facing backend error carrying HTCondor's own message."""
    prefix = {"auth": "HTCondor refused the authentication", "unreachable": "HTCondor schedd unreachable",
              "rejected": "HTCondor rejected the request"}.get(error.kind, "HTCondor error")
    return BackendError(f"{prefix} while {action}: {error.message}", retryable=error.kind == "unreachable")


def _ad_to_dict(ad: Any) -> dict[str, Any]:
    """ClassAds do not cross processes; plain values do (expressions become strings)."""
    out: dict[str, Any] = {}
    for key in ad.keys():
        value = ad.eval(key) if hasattr(ad, "eval") else ad[key]
        if isinstance(value, enum.Enum):  # classad2.Value.Undefined / Error
            value = None
        elif not isinstance(value, (str, int, float, bool, type(None))):
            value = str(value)
        out[key] = value
    return out


class CondorSeam:
    """The only code that calls ``htcondor2``. Lives inside one identity's process.

    Every method takes plain data and returns plain data, so a recording double with the same
    methods can stand in for it in tests.
    """

    def __init__(self, schedd_name: str | None = None, bindings: Any = None):
        if bindings is None:
            import htcondor2 as bindings  # imported here: the process's configuration is final by now

        #: ``htcondor2``, or a stand-in with the same names (tests)
        self._htcondor = bindings
        self._default_schedd = schedd_name or None
        self._schedds: dict[str | None, Any] = {}

    def _schedd(self, name: str | None):
        name = name or self._default_schedd
        if name not in self._schedds:
            htcondor2 = self._htcondor
            collector = htcondor2.Collector()
            if name:
                location = collector.locate(htcondor2.DaemonType.Schedd, name)
                if location is None:
                    raise SeamError("unreachable", f"schedd {name} is not known to the collector")
            else:
                location = collector.locate(htcondor2.DaemonType.Schedd)
            self._schedds[name] = htcondor2.Schedd(location)
        return self._schedds[name]

    def forget_schedds(self) -> bool:
        """Locate schedds afresh on the next call: after a failure the schedd may have moved (a
        restarted schedd listens on a new port, and the collector's ad says so). True if any
        location was cached."""
        cached = bool(self._schedds)
        self._schedds.clear()
        return cached

    def submit(self, schedd: str | None, description: dict[str, str], count: int, files: dict[str, str]) -> list[str]:
        """Queue ``count`` jobs in one transaction; spool ``files`` (by name) into their sandboxes.

        Spooling costs one file transfer per job: for batches, :meth:`submit_sharing_inputs`."""
        htcondor2 = self._htcondor
        s = self._schedd(schedd)
        staging = tempfile.mkdtemp(prefix="cmsaf-spool-")
        try:
            for name, content in files.items():
                fd = os.open(os.path.join(staging, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(content)
            # Queued held ("Spooling input data files", HoldReasonCode 16) until spool() is done;
            # the schedd then releases them itself.
            result = s.submit(htcondor2.Submit(dict(description, initialdir=staging)), count=count, spool=True)
            try:
                s.spool(result)
                # Spooled jobs are kept in the queue after completion (for output retrieval) unless
                # told otherwise; workers have no output to retrieve, so they leave when done.
                s.edit(result.cluster(), "LeaveJobInQueue", "false")
            except Exception:
                s.act(htcondor2.JobAction.Remove, str(result.cluster()), reason=("cmsaf: spooling input files failed", None))
                raise
            first = result.first_proc()
            return [f"{result.cluster()}.{first + i}" for i in range(result.num_procs())]
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def submit_sharing_inputs(self, schedd: str | None, inputs: dict[str, str], description: dict[str, str],
                              count: int, files: dict[str, str], reuse: tuple[str, str] | None = None
                              ) -> dict[str, Any]:
        """Spool ``files`` once, into the never-running job ``inputs``; then queue ``count`` jobs of
        ``description`` in one transaction, reading their sandbox files from its spool directory.

        ``reuse`` is ``(inputs job, its spool directory)`` of an earlier batch with the same files:
        nothing is spooled then. Returns ``{"inputs": job id, "iwd": directory, "jobs": [job ids]}``."""
        from .condor_jobs import reading_inputs_of

        s = self._schedd(schedd)
        if reuse is not None:
            holder, iwd = reuse
        else:
            [holder] = self.submit(schedd, inputs, 1, files)
            # The schedd rewrites a spooled job's Iwd to its spool directory.
            [ad] = s.query(f"ClusterId == {int(holder.split('.')[0])}", ["Iwd"])
            iwd = str(ad["Iwd"])
        try:
            result = s.submit(self._htcondor.Submit(reading_inputs_of(description, holder, iwd)), count=count)
        except Exception:
            if reuse is None:
                s.act(self._htcondor.JobAction.Remove, [holder], reason=("cmsaf: submitting the workers failed", None))
            raise
        first = result.first_proc()
        return {"inputs": holder, "iwd": iwd,
                "jobs": [f"{result.cluster()}.{first + i}" for i in range(result.num_procs())]}

    def query(self, schedd: str | None, constraint: str, projection: list[str]) -> list[dict[str, Any]]:
        return [_ad_to_dict(ad) for ad in self._schedd(schedd).query(constraint, projection)]

    def history(self, schedd: str | None, constraint: str, projection: list[str], match: int) -> list[dict[str, Any]]:
        return [_ad_to_dict(ad) for ad in self._schedd(schedd).history(constraint, projection, match)]

    def act(self, schedd: str | None, action: str, job_spec: list[str] | str, reason: str) -> dict[str, Any]:
        """Apply ``action`` (a ``JobAction`` name) to job ids or to a constraint."""
        # A plain-string reason is silently dropped by htcondor2 25.x's act(); the tuple form
        # (reason, code) is the one it forwards to the schedd.
        result = self._schedd(schedd).act(getattr(self._htcondor.JobAction, action), job_spec, reason=(reason, None))
        return _ad_to_dict(result) if result is not None else {}

    def schedds(self, projection: list[str]) -> list[dict[str, Any]]:
        """Schedd ads from the collector (for choosing the least loaded)."""
        htcondor2 = self._htcondor
        return [_ad_to_dict(ad) for ad in htcondor2.Collector().query(htcondor2.AdType.Schedd, "true", projection)]


# --- inside an identity's process -----------------------------------------------------------

_IDENTITY: str | None = None
_TOKEN_PATH: str | None = None
_TOKEN_DIGEST: bytes | None = None
_SEAM: Any = None


def _install_token(token: str) -> None:
    """Atomically replace this identity's token file (0600) when the token changed."""
    global _TOKEN_DIGEST
    digest = hashlib.sha256(token.encode()).digest()
    if digest == _TOKEN_DIGEST:
        return
    tmp = f"{_TOKEN_PATH}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    os.replace(tmp, _TOKEN_PATH)
    _TOKEN_DIGEST = digest


def _run(identity: str, token: str | None, method: str, args: tuple, secrets: tuple[str, ...]) -> Any:
    """Entry point of every call in an identity's process."""
    if identity != _IDENTITY:
        raise SeamError("error", f"call for {identity!r} refused by the process of {_IDENTITY!r}")
    if token is not None:
        _install_token(token)
    try:
        try:
            return getattr(_SEAM, method)(*args)
        except SeamError:
            raise
        except Exception as e:
            # A cached schedd location that refuses connections: the schedd restarted on a new
            # port. Nothing reached it, so locating it afresh and trying once more is safe.
            if "Failed to connect" not in str(e) or not getattr(_SEAM, "forget_schedds", lambda: False)():
                raise
        return getattr(_SEAM, method)(*args)
    except SeamError:
        raise
    except Exception as e:  # htcondor2 raises several types; pass a plain one back
        if hasattr(_SEAM, "forget_schedds"):
            _SEAM.forget_schedds()
        message = f"{type(e).__name__}: {e}".strip()
        for secret in secrets:
            if secret:
                message = message.replace(secret, "[redacted]")
        raise SeamError(classify_error(message), message) from None


def _read_frame(stream) -> Any:
    header = stream.read(4)
    if len(header) < 4:
        return None
    return pickle.loads(stream.read(int.from_bytes(header, "big")))


def _write_frame(stream, obj: Any) -> None:
    data = pickle.dumps(obj)
    stream.write(len(data).to_bytes(4, "big") + data)
    stream.flush()


def main() -> None:
    """Serve one identity's calls over stdin/stdout until the service closes the pipe."""
    global _IDENTITY, _TOKEN_PATH, _SEAM
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # nothing the bindings print can corrupt the protocol
    requests = sys.stdin.buffer
    _IDENTITY, _TOKEN_PATH, factory = _read_frame(requests)
    _SEAM = factory()
    while (request := _read_frame(requests)) is not None:
        try:
            reply = ("ok", _run(*request))
        except SeamError as e:
            reply = ("err", e.kind, e.message)
        _write_frame(replies, reply)


# --- in the service ---------------------------------------------------------------------------

#: Variables a client process never inherits from the service (it gets its own).
_NOT_INHERITED = ("BEARER_TOKEN", "BEARER_TOKEN_FILE", "CONDOR_CONFIG")


def client_environment(base: dict[str, str], condor_env: dict[str, str], token_path: str) -> dict[str, str]:
    """The environment an identity's process is born with: no inherited HTCondor or token settings."""
    env = {k: v for k, v in base.items() if not k.lower().startswith("_condor_") and k not in _NOT_INHERITED}
    env.update(condor_env)
    env["_condor_SCITOKENS_FILE"] = token_path
    return env


class ClientProcess:
    """One identity's ``python -m cmsaf_hub.service.backends.condor_seam`` process; one call at a time."""

    def __init__(self, identity: str, token_path: str, env: dict[str, str], seam_factory: Callable[[], Any]):
        self.identity = identity
        self._args = (token_path, env, seam_factory)
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def _ensure_started(self) -> asyncio.subprocess.Process:
        if self._proc is None or self._proc.returncode is not None:
            token_path, env, factory = self._args
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", __name__, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, env=env,
            )
            self._send((self.identity, token_path, factory))
        return self._proc

    def _send(self, obj: Any) -> None:
        data = pickle.dumps(obj)
        self._proc.stdin.write(len(data).to_bytes(4, "big") + data)

    async def request(self, identity: str, token: str | None, method: str, args: tuple, secrets: tuple) -> Any:
        async with self._lock:
            proc = await self._ensure_started()
            try:
                self._send((identity, token, method, args, secrets))
                await proc.stdin.drain()
                header = await proc.stdout.readexactly(4)
                reply = pickle.loads(await proc.stdout.readexactly(int.from_bytes(header, "big")))
            except (asyncio.IncompleteReadError, ConnectionError):
                await self.close()
                raise SeamError("error", f"the HTCondor client process of {self.identity} died") from None
            except asyncio.CancelledError:
                # The reply may still come and would be read as the next call's: start afresh instead.
                self._proc = None
                if proc.returncode is None:
                    proc.kill()
                raise
        if reply[0] == "err":
            raise SeamError(reply[1], reply[2])
        return reply[1]

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


class IdentityProcesses:
    """One client process per identity, the least recently used stopped beyond a cap."""

    def __init__(
        self,
        *,
        state_dir: str | Path,
        condor_env: dict[str, str],
        seam_factory: Callable[[], Any] = CondorSeam,
        max_processes: int = 32,
        service_token_file: str | None = None,
    ):
        self.state_dir = Path(state_dir)
        self.condor_env = dict(condor_env)
        self.seam_factory = seam_factory
        self.max_processes = max_processes
        self.service_token_file = service_token_file
        self._clients: OrderedDict[str, ClientProcess] = OrderedDict()
        self._closing: set[asyncio.Future] = set()

    def _token_path(self, identity: str) -> str:
        if identity == SERVICE_IDENTITY:
            if not self.service_token_file:
                raise SeamError("auth", "no service read identity is configured")
            return self.service_token_file
        directory = self.state_dir / hashlib.sha256(identity.encode()).hexdigest()[:16]
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return str(directory / "condor.token")

    def client(self, identity: str) -> ClientProcess:
        client = self._clients.get(identity)
        if client is not None:
            self._clients.move_to_end(identity)
            return client
        token_path = self._token_path(identity)
        env = client_environment(dict(os.environ), self.condor_env, token_path)
        client = self._clients[identity] = ClientProcess(identity, token_path, env, self.seam_factory)
        while len(self._clients) > self.max_processes:
            _, old = self._clients.popitem(last=False)
            task = asyncio.ensure_future(old.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return client

    async def call(self, identity: str, token: str | None, method: str, *args: Any) -> Any:
        """Run ``seam.<method>(*args)`` in ``identity``'s process, authenticated with ``token``."""
        if token is None and identity != SERVICE_IDENTITY:
            raise SeamError("auth", f"no condor token for {identity}")
        secrets = (token,) if token else ()
        return await self.client(identity).request(identity, token, method, args, secrets)

    def identities(self) -> list[str]:
        return list(self._clients)

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), OrderedDict()
        await asyncio.gather(*(c.close() for c in clients), *self._closing)


if __name__ == "__main__":
    # Serve from the importable module, so the seam and this loop share one SeamError class.
    from cmsaf_hub.service.backends.condor_seam import main as serve

    serve()
