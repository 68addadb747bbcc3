"""Dask workers that accept no inbound connection, reached through the hub (the idea of HTCondor's CCB).

A worker on an outbound-only site advertises an address that means "through the hub"::

    hubrevs://hub.example:443/services/cmsaf/clusters/<id>/workers/<worker id>   (hubrev:// for http hubs)

and keeps one outbound *control channel* (a websocket) to the cluster service. A peer (scheduler,
client, other worker) that connects to that address asks the service for the worker; the service
tells the worker over its control channel, the worker opens a fresh connection **outward** to the
service, and the service splices it to the peer's. Both connections are HTTP upgrades through the
hub's proxy; after the ``101`` the bytes are Dask's own ``tcp://`` framing end to end, so the broker
costs a relay hop, not Dask's websocket framing.

With ``CMSAF_BROKER_URL`` set (the service's ``Broker.public_url``) the worker's address names the
broker's own listener instead of the hub, and its control channel, its answers and its peers'
connects all go there: the hub's proxy, which would relay every brokered byte twice, is left out.

Service URLs (below the cluster's ``<prefix>clusters/<id>``):

- ``/broker/<worker id>``: the control channel (worker credential);
- ``/broker/<worker id>/<ticket>``: the worker's answering connection for one brokered connect;
- ``/workers/<worker id>``: where peers connect (owner's hub token or the cluster's worker credential).

The ``hubrev``/``hubrevs`` comm schemes are registered through the ``distributed.comm.backends`` entry point,
so every process with cmsaf_hub installed (scheduler, clients, workers) can connect to such addresses.
A peer authenticates with the ``Authorization`` header its ``Security.extra_conn_args`` carries
(:func:`cmsaf_hub.comm.hub_security`), else with the cluster's worker credential from its
environment (``CMSAF_WORKER_CREDENTIAL``/``_FILE``: schedulers and facility workers get it from the
service).

An outbound-only worker runs ``python -m cmsaf_hub.reverse <scheduler ws(s) URL> [dask worker args]``
(:func:`outbound_worker_command`): it runs ``dask worker`` with this module as preload, and starts
the worker again when it lost its scheduler connection (a service restart drops it; Dask workers do
not reconnect by themselves).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import dask
from distributed.comm.core import BaseListener, CommClosedError, Connector, FatalCommClosedError
from distributed.comm.registry import Backend, backends
from distributed.comm.tcp import MAX_BUFFER_SIZE, TCP
from dask.utils import parse_timedelta
from tornado.httpclient import HTTPRequest
from tornado.httputil import HTTPHeaders, parse_response_start_line
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient
from tornado.websocket import WebSocketClientConnection, WebSocketError, websocket_connect

from . import comm as hub_comm

logger = logging.getLogger("cmsaf_hub.reverse")

#: comm scheme -> whether the hub is reached over TLS (https/wss)
HUB_TLS = {"hubrev": False, "hubrevs": True}
#: The service answers a refused upgrade with a small JSON body; read at most this much of it.
MAX_HEAD_BYTES = 64 * 1024
#: HTTP statuses after which retrying a brokered connect cannot help (Dask's connect stops at once).
FATAL_STATUSES = frozenset({400, 401, 403, 404})
#: Longest pause between control-channel reconnection attempts, seconds.
MAX_RECONNECT_DELAY = 10.0
#: Control-channel keepalive: websocket ping every ``PING_INTERVAL`` s, dropped after ``PING_TIMEOUT`` s.
PING_INTERVAL = 10.0
PING_TIMEOUT = 30.0
#: Exit status of a worker that lost its scheduler connection (the wrapper starts it again).
RESTART_EXIT_STATUS = 75
#: Environment variable naming the file in which the preload records why its worker closed.
CLOSE_REASON_FILE_ENV = "CMSAF_REVERSE_CLOSE_REASON_FILE"
#: Set to ``1`` to keep the worker's bootstrap loopback ``tcp://`` listener beside the hub one
#: (benchmarks compare the two paths to the same worker). It is unauthenticated: never on shared nodes.
KEEP_LOCAL_LISTENER_ENV = "CMSAF_REVERSE_KEEP_LOCAL_LISTENER"
#: The broker's own listener as the worker reaches it (the service's ``Broker.public_url``), e.g.
#: ``https://broker.hub.example:8443``: the worker's control channel and answers go there, not
#: through the hub's proxy, and its address names it. Unset: everything goes through the hub.
BROKER_URL_ENV = "CMSAF_BROKER_URL"
#: The close reason Dask gives when the scheduler connection broke.
CONNECTION_LOST_REASON = "worker-handle-scheduler-connection-broken"


def connect_timeout() -> float:
    """Dask's own connect timeout (``distributed.comm.timeouts.connect``), used for every handshake here."""
    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="seconds"))


@dataclass(frozen=True)
class HubLocation:
    """A scheme-less ``host:port/path`` address below the hub, and how to reach the hub."""

    host: str
    port: int
    path: str
    tls: bool

    @classmethod
    def parse(cls, loc: str, tls: bool) -> HubLocation:
        host_port, _, path = loc.partition("/")
        host, sep, port = host_port.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(f"expected host:port/path in a hub address, got {loc!r}")
        return cls(host.strip("[]"), int(port), "/" + path.strip("/"), tls)

    @property
    def loc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}{self.path}"

    def url(self, path: str | None = None) -> str:
        """The ``ws(s)://`` URL of ``path`` (default: this location's own path) on the hub."""
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://{self.loc.partition('/')[0]}{path or self.path}"


def hub_cluster_address(scheduler_url: str, broker_url: str = "") -> str:
    """``ws(s)://hub/<prefix>clusters/<id>/comm`` (a worker's scheduler address) -> ``hubrev(s)://hub/<prefix>clusters/<id>``.

    With ``broker_url`` (``http(s)://host:port`` of the broker's own listener) the same path on that
    host instead: ``hubrevs://`` for ``https``.
    """
    u = urlsplit(scheduler_url)
    if u.scheme not in ("ws", "wss") or not u.path.rstrip("/").endswith("/comm"):
        raise ValueError(f"not a cluster's comm URL through the hub: {scheduler_url!r}")
    path = u.path.rstrip("/")[: -len("/comm")]
    tls = u.scheme == "wss"
    if broker_url:
        u = urlsplit(broker_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"{BROKER_URL_ENV} must be http(s)://host[:port], got {broker_url!r}")
        tls = u.scheme == "https"
    scheme = "hubrevs" if tls else "hubrev"
    port = u.port or (443 if tls else 80)
    host = f"[{u.hostname}]" if ":" in (u.hostname or "") else u.hostname
    return f"{scheme}://{host}:{port}{path}"


def _authorization(connection_args: dict[str, Any]) -> str:
    """The ``Authorization`` value a brokered connect presents: the Security's header, else the cluster credential."""
    headers = (connection_args.get("extra_conn_args") or {}).get("headers") or {}
    for name, value in headers.items():
        if name.lower() == "authorization":
            return value
    try:
        return f"token {hub_comm.read_worker_credential()}"
    except RuntimeError:
        raise FatalCommClosedError(
            "a hubrev:// address needs credentials: connect with cmsaf_hub.comm.hub_security(token), or set "
            f"{hub_comm.CREDENTIAL_ENV} to the cluster's worker credential"
        ) from None


def _hub_ssl_context(location: HubLocation, connection_args: dict[str, Any]) -> ssl.SSLContext | None:
    """TLS for the hub leg: an explicit ``extra_conn_args["ssl_options"]``, else the system store.

    Never the Security's own ``ssl_context``: that one trusts the cluster's CA, not the hub's.
    """
    if not location.tls:
        return None
    explicit = (connection_args.get("extra_conn_args") or {}).get("ssl_options")
    return explicit if isinstance(explicit, ssl.SSLContext) else ssl.create_default_context()


async def open_upgraded_stream(location: HubLocation, path: str, authorization: str,
                               ssl_context: ssl.SSLContext | None, timeout: float) -> IOStream:
    """Connect to the hub, send a websocket upgrade for ``path``, return the stream once answered ``101``.

    Raises :class:`FatalCommClosedError` for refusals retrying cannot fix (401, 403, 404), else
    :class:`CommClosedError` (Dask's connect retries those until its timeout).
    """
    try:
        stream = await asyncio.wait_for(
            TCPClient().connect(location.host, location.port, ssl_options=ssl_context, max_buffer_size=int(MAX_BUFFER_SIZE)),
            timeout)
    except (OSError, StreamClosedError, asyncio.TimeoutError) as e:
        raise CommClosedError(f"cannot reach the hub at {location.host}:{location.port}: {type(e).__name__}") from None
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    head = (f"GET {path} HTTP/1.1\r\nHost: {location.loc.partition('/')[0]}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: {authorization}\r\n\r\n")
    try:
        stream.set_nodelay(True)
        await stream.write(head.encode("latin-1"))
        response = await asyncio.wait_for(stream.read_until(b"\r\n\r\n", max_bytes=MAX_HEAD_BYTES), timeout)
        status = parse_response_start_line(response.split(b"\r\n", 1)[0].decode("latin-1"))
        headers = HTTPHeaders.parse(response.split(b"\r\n", 1)[1].decode("latin-1"))
        if status.code == 101:
            return stream
        body = b""
        length = int(headers.get("Content-Length", "0") or 0)
        if 0 < length <= MAX_HEAD_BYTES:
            body = await asyncio.wait_for(stream.read_bytes(length), timeout)
    except (StreamClosedError, asyncio.TimeoutError, ValueError) as e:
        stream.close()
        raise CommClosedError(f"no upgrade answer from the hub for {path}: {type(e).__name__}") from None
    stream.close()
    try:
        detail = json.loads(body).get("error", "")
    except ValueError:
        detail = ""
    message = f"the hub refused {path}: {status.code} {status.reason}" + (f" ({detail})" if detail else "")
    raise (FatalCommClosedError if status.code in FATAL_STATUSES else CommClosedError)(message)


class HubConnector(Connector):
    """Connects to a ``hubrev(s)://`` worker address: the service splices in a connection the worker opened."""

    def __init__(self, scheme: str):
        self.scheme = scheme

    async def connect(self, address: str, deserialize: bool = True, **connection_args: Any) -> TCP:
        location = HubLocation.parse(address, HUB_TLS[self.scheme])
        stream = await open_upgraded_stream(
            location, location.path, _authorization(connection_args),
            _hub_ssl_context(location, connection_args), connect_timeout())
        return TCP(stream, f"{self.scheme}://{location.loc}#peer", f"{self.scheme}://{location.loc}", deserialize)


class HubListener(BaseListener):
    """The worker side: a control channel to the service, fed with connections the worker opens outward.

    ``loc`` is the cluster's base below the hub (``host:port/<prefix>clusters/<id>``); the contact
    address appends ``/workers/<worker id>``, a fresh random id per listener.
    """

    def __init__(self, scheme: str, loc: str, comm_handler: Any, deserialize: bool = True,
                 allow_offload: bool = True, **connection_args: Any):
        super().__init__()
        self.scheme = scheme
        self.cluster = HubLocation.parse(loc, HUB_TLS[scheme])
        self.worker_id = secrets.token_hex(8)
        self.comm_handler = comm_handler
        self.deserialize = deserialize
        self.allow_offload = allow_offload
        self.connection_args = connection_args
        self.registered = asyncio.Event()
        self._control: WebSocketClientConnection | None = None
        self._control_task: asyncio.Task | None = None
        self._answers: set[asyncio.Task] = set()
        self._stopped = False

    @property
    def prefix(self) -> str:
        """``hubrev://`` (Dask's listeners expose their scheme prefix; the worker logs it)."""
        return f"{self.scheme}://"

    @property
    def listen_address(self) -> str:
        return self.contact_address

    @property
    def contact_address(self) -> str:
        return f"{self.scheme}://{self.cluster.loc}/workers/{self.worker_id}"

    def _control_request(self) -> HTTPRequest:
        timeout = connect_timeout()
        return HTTPRequest(
            self.cluster.url(f"{self.cluster.path}/broker/{self.worker_id}"),
            headers={"Authorization": _authorization(self.connection_args)},
            connect_timeout=timeout, request_timeout=timeout,
            ssl_options=_hub_ssl_context(self.cluster, self.connection_args),
        )

    async def start(self) -> None:
        """Open the control channel; fail (OSError) if the service does not register the worker in time."""
        self._control_task = asyncio.create_task(self._control_loop(), name=f"hub-control-{self.worker_id}")
        registered = asyncio.ensure_future(self.registered.wait())
        await asyncio.wait([registered, self._control_task], timeout=connect_timeout(),
                           return_when=asyncio.FIRST_COMPLETED)
        if self._control_task.done():  # a refusal (401/403/404) ends the loop before registration
            registered.cancel()
            raise self._control_task.exception() or OSError(f"{self.contact_address}: control channel ended")
        if not registered.done():
            registered.cancel()
            self.stop()
            raise OSError(f"the hub did not register {self.contact_address} within {connect_timeout():g} s")

    def stop(self) -> None:
        self._stopped = True
        if self._control is not None:
            self._control.close()
        for task in [self._control_task, *self._answers]:
            if task is not None:
                task.cancel()

    async def _control_loop(self) -> None:
        """Keep the control channel open: reconnect with backoff until stopped; refusals end the worker's start."""
        delay = 0.5
        while not self._stopped:
            try:
                self._control = await websocket_connect(
                    self._control_request(), ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT)
            except Exception as e:
                code = getattr(e, "code", None)
                if code in FATAL_STATUSES and not self.registered.is_set():
                    raise FatalCommClosedError(f"the hub refused the control channel of {self.contact_address}: {code}") from None
                logger.warning("Control channel to %s not open (%s); retrying in %.1f s",
                               self.cluster.url(), code or type(e).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RECONNECT_DELAY)
                continue
            delay = 0.5
            await self._serve_control(self._control)
            if not self._stopped:
                logger.warning("Control channel of %s closed; reconnecting", self.contact_address)

    async def _serve_control(self, control: WebSocketClientConnection) -> None:
        while True:
            try:
                message = await control.read_message()
            except WebSocketError:
                message = None
            if message is None:
                return
            try:
                request = json.loads(message)
            except ValueError:
                logger.warning("Ignoring a malformed control message")
                continue
            if request.get("op") == "registered":
                logger.info("Reachable through the hub at %s", self.contact_address)
                self.registered.set()
            elif request.get("op") == "connect" and isinstance(request.get("ticket"), str):
                task = asyncio.create_task(self._answer(request["ticket"]))
                self._answers.add(task)
                task.add_done_callback(self._answers.discard)

    async def _answer(self, ticket: str) -> None:
        """Open the connection a peer asked for, outward, and hand it to the worker as an incoming comm."""
        path = f"{self.cluster.path}/broker/{self.worker_id}/{ticket}"
        try:
            stream = await open_upgraded_stream(
                self.cluster, path, _authorization(self.connection_args),
                _hub_ssl_context(self.cluster, self.connection_args), connect_timeout())
        except CommClosedError as e:
            logger.warning("Could not answer a brokered connection: %s", e)
            return
        comm = TCP(stream, self.contact_address, f"{self.scheme}://{self.cluster.loc}/peer/{ticket[:8]}", self.deserialize)
        comm.allow_offload = self.allow_offload
        try:
            await asyncio.wait_for(self.on_connection(comm), connect_timeout())
        except (CommClosedError, asyncio.TimeoutError):
            comm.abort()
            logger.info("Brokered connection closed before its handshake completed")
            return
        await self.comm_handler(comm)


class HubBackend(Backend):
    """The ``hubrev://`` comm scheme (hub reached over plain HTTP, e.g. a dev stack)."""

    scheme = "hubrev"

    def get_connector(self) -> Connector:
        return HubConnector(self.scheme)

    def get_listener(self, loc: str, handle_comm: Any, deserialize: bool, **connection_args: Any) -> HubListener:
        return HubListener(self.scheme, loc, handle_comm, deserialize, **connection_args)

    def get_address_host(self, loc: str) -> str:
        return HubLocation.parse(loc, HUB_TLS[self.scheme]).host

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        location = HubLocation.parse(loc, HUB_TLS[self.scheme])
        return location.host, location.port

    def resolve_address(self, loc: str) -> str:
        return loc

    def get_local_address_for(self, loc: str) -> str:
        return loc


class HubsBackend(HubBackend):
    """The ``hubrevs://`` comm scheme (hub reached over HTTPS)."""

    scheme = "hubrevs"


def install() -> None:
    """Register the ``hubrev``/``hubrevs`` schemes in this process (the entry point does it lazily too)."""
    for backend in (HubBackend(), HubsBackend()):
        if not isinstance(backends.get(backend.scheme), type(backend)):
            backends[backend.scheme] = backend


# -- the outbound-only worker ------------------------------------------------------------------------


async def dask_setup(worker: Any) -> None:
    """Worker preload: present the cluster credential and become reachable through the hub.

    Listeners start before preloads run, so the worker first listens on loopback (``--host
    127.0.0.1``); this adds the hub listener (at the broker's own listener if ``CMSAF_BROKER_URL``
    is set) and makes its address the one the worker registers with.
    """
    hub_comm.dask_setup(worker)
    install()
    _track_close_reason(worker)
    bootstrap = list(worker.listeners)
    location = hub_cluster_address(worker.scheduler.address, os.environ.get(BROKER_URL_ENV, ""))
    await worker.listen(location, **worker.security.get_connection_args("worker"))
    address = worker.listeners[-1].contact_address
    worker.contact_address = address
    worker._address = address
    if os.environ.get(KEEP_LOCAL_LISTENER_ENV) != "1":
        # the loopback listener is plain tcp without authentication: other local users of the node
        # must not reach the worker through it
        for listener in bootstrap:
            listener.stop()
            worker.listeners.remove(listener)


def dask_teardown(worker: Any) -> None:
    """Record why the worker closed, so the wrapper knows whether to start it again."""
    path = os.environ.get(CLOSE_REASON_FILE_ENV)
    reason = getattr(worker, "_cmsaf_close_reason", None) or ""
    if path:
        with open(path, "w") as f:
            f.write(reason)


def _track_close_reason(worker: Any) -> None:
    """Remember the ``reason`` this worker's ``close`` is first called with (read by :func:`dask_teardown`)."""
    original = worker.close

    async def close(*args: Any, **kwargs: Any) -> Any:
        if not getattr(worker, "_cmsaf_close_reason", None):
            worker._cmsaf_close_reason = kwargs.get("reason", "worker-close")
        return await original(*args, **kwargs)

    worker.close = close


def worker_process_command(scheduler_url: str, *extra_args: str, python: str = sys.executable) -> list[str]:
    """One ``dask worker`` process of an outbound-only worker (no nanny: the wrapper restarts it)."""
    return [python, "-m", "distributed.cli.dask_worker", scheduler_url,
            "--preload", "cmsaf_hub.reverse", "--no-nanny", "--protocol", "tcp", "--host", "127.0.0.1",
            *extra_args]


def outbound_worker_command(scheduler_url: str, *extra_args: str, python: str = sys.executable) -> list[str]:
    """The command line of a worker on an outbound-only site (credential in its environment, never here)."""
    return [python, "-m", "cmsaf_hub.reverse", scheduler_url, *extra_args]


def run_outbound_worker(argv: list[str], *, max_quick_failures: int = 5, quick_seconds: float = 30.0,
                        stop_grace: float = 15.0) -> int:
    """Run the worker; start it again whenever it lost its scheduler connection.

    A worker retired by its scheduler ends the wrapper with its status. SIGTERM/SIGINT (HTCondor
    removing the job, a user's Ctrl-C) go to the worker, which gets ``stop_grace`` seconds to close
    before it is killed; the wrapper then exits without starting it again. After
    ``max_quick_failures`` consecutive lives shorter than ``quick_seconds`` the wrapper gives up, so a
    cluster that is gone does not keep a job alive forever (each life is bounded by ``--death-timeout``).
    """
    if not argv:
        print("usage: python -m cmsaf_hub.reverse <scheduler ws(s):// URL through the hub> [dask worker args]",
              file=sys.stderr)
        return 2
    scheduler_url, *extra = argv
    if not any(a.startswith("--death-timeout") for a in extra):
        extra += ["--death-timeout", "120"]
    stopping: list[int] = []
    proc: subprocess.Popen | None = None

    def forward(signum: int, frame: Any) -> None:
        stopping.append(signum)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    quick_failures = 0
    while not stopping:
        with tempfile.NamedTemporaryFile(prefix="cmsaf-worker-", suffix=".reason", delete=False) as f:
            reason_file = f.name
        started = time.monotonic()
        proc = subprocess.Popen(worker_process_command(scheduler_url, *extra),
                                env={**os.environ, CLOSE_REASON_FILE_ENV: reason_file})
        kill_at: float | None = None
        while proc.poll() is None:
            if stopping and kill_at is None:
                kill_at = time.monotonic() + stop_grace
            if kill_at is not None and time.monotonic() >= kill_at:
                logger.warning("The worker did not stop within %.0f s of the signal; killing it", stop_grace)
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.5)
        with open(reason_file) as f:
            reason = f.read().strip()
        with contextlib.suppress(OSError):
            os.unlink(reason_file)
        if stopping:
            return 128 + stopping[0]
        if reason != CONNECTION_LOST_REASON:
            return proc.returncode
        quick_failures = quick_failures + 1 if time.monotonic() - started < quick_seconds else 0
        if quick_failures >= max_quick_failures:
            logger.error("The worker lost its scheduler %d times in a row; giving up", quick_failures)
            return RESTART_EXIT_STATUS
        logger.warning("The worker lost its scheduler connection; starting it again")
        time.sleep(min(2.0 * quick_failures, MAX_RECONNECT_DELAY))
    return 128 + stopping[0]


install()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - cmsaf_hub.reverse - %(message)s")
    sys.exit(run_outbound_worker(sys.argv[1:]))
