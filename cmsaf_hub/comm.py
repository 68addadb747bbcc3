"""Connecting Dask to a cluster through the hub: the client's and the outbound-only worker's side.

A scheduler behind the hub is reached at ``ws(s)://<hub>/services/cmsaf/clusters/<id>/comm`` with an
``Authorization: token <value>`` header: the user's hub token (clients) or the cluster's worker
credential (workers). Dask's websocket connector leaves Nagle's algorithm on, which makes every round
trip ~9x slower than ``tcp://``; :func:`install_nodelay_ws` registers connectors that turn it off.

Client::

    from cmsaf_hub.comm import hub_security
    client = Client("wss://hub.example/services/cmsaf/clusters/abc/comm", security=hub_security(token))

Outbound-only worker (credential in the environment, never on the command line)::

    CMSAF_WORKER_CREDENTIAL=<secret> dask worker wss://hub.example/services/cmsaf/clusters/abc/comm \\
        --preload cmsaf_hub.comm --preload-nanny cmsaf_hub.comm --protocol tcp

See :func:`hub_worker_command`.

The fast path (``hub://`` for an ``http://`` hub, ``hubs://`` for an ``https://`` one) is Dask's own
TLS comm carried through the hub: the connector sends a websocket upgrade request with the token to
``<service>/clusters/<id>/tls``; once the service has checked it and answered ``101``, every proxy
in front passes the connection's bytes through untouched, and the connector runs a TLS session with
the scheduler itself (the cluster's certificate, fetched once from the same URL) over that socket::

    client = Client("hubs://hub.example:443/services/cmsaf/clusters/abc/tls", security=hub_security(token))

``ws(s)://`` stays for processes that only have plain distributed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import ssl
import sys
from typing import Any
from urllib.parse import urlsplit

import dask
from dask.utils import parse_timedelta
from distributed.comm.core import CommClosedError, Connector, FatalCommClosedError
from distributed.comm.registry import backends
from distributed.comm.tcp import MAX_BUFFER_SIZE, TLS, TCPBackend
from distributed.comm.ws import WS, WSS, WSBackend, WSConnector, WSSBackend, WSSConnector
from distributed.security import Security
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httputil import HTTPHeaders, parse_response_start_line
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

#: Environment variables the worker preload reads its credential from (value, or a file holding it).
CREDENTIAL_ENV = "CMSAF_WORKER_CREDENTIAL"
CREDENTIAL_FILE_ENV = "CMSAF_WORKER_CREDENTIAL_FILE"


#: Bytes read per socket read on a hub websocket (tornado's default, 64 KiB, costs one event-loop
#: turn per 64 KiB of a multi-MiB Dask frame).
READ_CHUNK_SIZE = 1024 * 1024


class _NoDelay:
    """Connector mixin: Nagle off, and larger socket reads, on the websocket's TCP stream."""

    async def connect(self, address: str, deserialize: bool = True, **connection_args: Any) -> WS:
        comm = await super().connect(address, deserialize=deserialize, **connection_args)  # type: ignore[misc]
        comm.sock.stream.set_nodelay(True)
        comm.sock.stream.read_chunk_size = min(READ_CHUNK_SIZE, comm.sock.stream.max_buffer_size // 2)
        return comm


class NoDelayWSConnector(_NoDelay, WSConnector):
    comm_class = WS


class NoDelayWSSConnector(_NoDelay, WSSConnector):
    comm_class = WSS


class _PathAware:
    """Backend mixin: address helpers that accept ``host:port/path`` (a scheduler behind the hub).

    distributed's own ``ws`` backend parses ``host:port`` only, so a nanny or worker given
    ``ws://hub:443/services/cmsaf/clusters/x/comm`` fails while choosing its own listen address.
    """

    def get_address_host(self, loc: str) -> str:
        return super().get_address_host(loc.partition("/")[0])  # type: ignore[misc]

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        return super().get_address_host_port(loc.partition("/")[0])  # type: ignore[misc]

    def resolve_address(self, loc: str) -> str:
        host_port, slash, path = loc.partition("/")
        return super().resolve_address(host_port) + slash + path  # type: ignore[misc]

    def get_local_address_for(self, loc: str) -> str:
        return super().get_local_address_for(loc.partition("/")[0])  # type: ignore[misc]


class NoDelayWSBackend(_PathAware, WSBackend):
    _connector_class = NoDelayWSConnector


class NoDelayWSSBackend(_PathAware, WSSBackend):
    _connector_class = NoDelayWSSConnector


# --- the fast path: Dask's TLS comm through the hub ------------------------------------------------

#: The websocket GUID of RFC 6455, for ``Sec-WebSocket-Accept``.
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Largest HTTP response head (101 or error) read from the hub.
MAX_HEAD_BYTES = 64 * 1024
#: Bytes per read when carrying the inner TLS session over an outer one (``hubs://``).
BRIDGE_CHUNK_SIZE = 1024 * 1024
#: Statuses after which retrying cannot help: the connector fails at once instead of retrying.
FATAL_STATUSES = frozenset({400, 401, 403, 404})


def websocket_accept(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value answering ``Sec-WebSocket-Key: key`` (RFC 6455, 4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()).decode()


def split_hub_address(loc: str, *, tls: bool) -> tuple[str, int, str]:
    """``hub.example:443/services/cmsaf/clusters/x/tls`` -> ``("hub.example", 443, "/services/...")``."""
    parts = urlsplit("//" + loc)
    if not parts.hostname or not parts.path.endswith("/tls"):
        raise ValueError(f"not a hub cluster address (host[:port]/<service>/clusters/<id>/tls): {loc!r}")
    return parts.hostname, parts.port or (443 if tls else 80), parts.path


def upgrade_request(host: str, port: int, path: str, key: str, headers: dict[str, str]) -> bytes:
    """The websocket upgrade request that opens the raw channel (credentials in ``headers``)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HubRefused(CommClosedError):
    """The hub answered something other than what was asked (its status and error text)."""


class HubRefusedFatal(HubRefused, FatalCommClosedError):
    """A refusal retrying cannot fix (401, 403, 404): distributed's ``connect`` gives up at once."""


def refusal(status: int, reason: str, body: bytes, address: str) -> HubRefused:
    try:
        message = json.loads(body).get("error") or reason
    except (ValueError, AttributeError):
        message = reason
    cls = HubRefusedFatal if status in FATAL_STATUSES else HubRefused
    return cls(f"the hub refused {address}: {status} {message}")


async def _read_response(stream: IOStream, timeout: float) -> tuple[int, str, HTTPHeaders, bytes]:
    """One HTTP/1.1 response head from the hub, and its (short, Content-Length) body unless it is a 101."""
    head = await asyncio.wait_for(stream.read_until(b"\r\n\r\n", max_bytes=MAX_HEAD_BYTES), timeout)
    first, _, rest = head.decode("latin-1").partition("\r\n")
    status = parse_response_start_line(first)
    headers = HTTPHeaders.parse(rest)
    body = b""
    if status.code != 101 and headers.get("Content-Length", "0").isdigit():
        length = int(headers.get("Content-Length", "0"))
        if 0 < length <= MAX_HEAD_BYTES:
            body = await asyncio.wait_for(stream.read_bytes(length), timeout)
    return status.code, status.reason, headers, body


async def _pipe(source: IOStream, sink: IOStream) -> None:
    try:
        while True:
            await sink.write(await source.read_bytes(BRIDGE_CHUNK_SIZE, partial=True))
    except StreamClosedError:
        pass
    finally:
        source.close()
        sink.close()


#: The running copy tasks of TLS-inside-TLS bridges.
_BRIDGE_TASKS: set[asyncio.Task] = set()


def _loopback_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected loopback TCP sockets (TCP, not AF_UNIX: distributed sets TCP keepalive on its comms)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        near = socket.create_connection(server.getsockname())
        far, peer = server.accept()
        if peer != near.getsockname():  # someone else raced us to the port
            near.close()
            far.close()
            raise CommClosedError("could not set up the local TLS-in-TLS bridge")
    return near, far


def _bridge(outer: IOStream) -> IOStream:
    """A plain stream whose bytes travel inside ``outer`` (an ``SSLIOStream``): TLS inside TLS.

    Tornado cannot start TLS on a TLS stream, so the inner session runs on one end of a loopback
    socket pair and two pipes copy between the other end and the outer stream.
    """
    near, far = _loopback_pair()
    far_stream, near_stream = IOStream(far), IOStream(near, max_buffer_size=MAX_BUFFER_SIZE)
    for stream in (outer, far_stream):
        stream.read_chunk_size = BRIDGE_CHUNK_SIZE
    for pipe in (_pipe(outer, far_stream), _pipe(far_stream, outer)):
        task = asyncio.ensure_future(pipe)
        _BRIDGE_TASKS.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(_BRIDGE_TASKS.discard)
    return near_stream


class HubTLSConnector(Connector):
    """Connects ``hub(s)://`` addresses: upgrade through the hub, then Dask's TLS comm inside.

    The hub token comes from ``extra_conn_args["headers"]`` (:func:`hub_security`), the hub's CA
    from ``extra_conn_args["ssl_options"]``; the cluster's certificate and key are fetched from the
    service once per process and cluster, with the same token, and never written anywhere.
    """

    prefix = "hub://"
    hub_tls = False
    comm_class = TLS
    encrypted = True
    #: ``(hub, path, token digest)`` -> the cluster's client TLS context.
    cluster_contexts: dict[tuple[str, int, str, str], ssl.SSLContext] = {}

    def hub_ssl_context(self, connection_args: dict[str, Any]) -> ssl.SSLContext | None:
        if not self.hub_tls:
            return None
        extra = connection_args.get("extra_conn_args") or {}
        return extra.get("ssl_options") or ssl.create_default_context()

    async def open(self, host: str, port: int, hub_ssl: ssl.SSLContext | None, timeout: float) -> IOStream:
        stream = await asyncio.wait_for(TCPClient().connect(host, port, max_buffer_size=MAX_BUFFER_SIZE), timeout)
        stream.set_nodelay(True)
        if hub_ssl is not None:
            stream = await asyncio.wait_for(stream.start_tls(False, ssl_options=hub_ssl, server_hostname=host), timeout)
        return stream

    async def cluster_context(self, host: str, port: int, path: str, headers: dict[str, str],
                              hub_ssl: ssl.SSLContext | None, timeout: float) -> ssl.SSLContext:
        """The cluster's client TLS context: ``GET <path>`` answers ``{"tls_cert", "tls_key"}`` (PEM)."""
        token_digest = hashlib.sha256(headers.get("Authorization", "").encode()).hexdigest()
        cache_key = (host, port, path, token_digest)
        context = self.cluster_contexts.get(cache_key)
        if context is not None:
            return context
        url = f"{'https' if self.hub_tls else 'http'}://{host}:{port}{path}"
        request = HTTPRequest(url, headers={**headers, "Accept": "application/json"}, ssl_options=hub_ssl,
                              connect_timeout=timeout, request_timeout=timeout, follow_redirects=False)
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except OSError as e:
            raise CommClosedError(f"{self.prefix}{host}:{port}{path}: {type(e).__name__}: {e}") from None
        if response.code != 200:
            raise refusal(response.code, response.reason, response.body or b"", f"{self.prefix}{host}:{port}{path}")
        try:
            pem = json.loads(response.body)
            cert, key = pem["tls_cert"], pem["tls_key"]
        except (ValueError, TypeError, KeyError):
            raise FatalCommClosedError(f"{self.prefix}{host}:{port}{path}: no cluster certificate in the answer") from None
        security = Security(tls_ca_file=cert, tls_client_cert=cert, tls_client_key=key, require_encryption=True)
        context = self.cluster_contexts[cache_key] = security.get_connection_args("client")["ssl_context"]
        return context

    async def connect(self, address: str, deserialize: bool = True, **connection_args: Any) -> TLS:
        host, port, path = split_hub_address(address, tls=self.hub_tls)
        headers = dict((connection_args.get("extra_conn_args") or {}).get("headers") or {})
        if "Authorization" not in headers:
            raise FatalCommClosedError(
                f"{self.prefix}{address} needs a hub token: connect with security=cmsaf_hub.comm.hub_security(token)")
        timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="seconds")
        hub_ssl = self.hub_ssl_context(connection_args)
        try:
            cluster_ssl = await self.cluster_context(host, port, path, headers, hub_ssl, timeout)
            stream = await self.open(host, port, hub_ssl, timeout)
            key = base64.b64encode(os.urandom(16)).decode()
            await stream.write(upgrade_request(host, port, path, key, headers))
            status, reason, response_headers, body = await _read_response(stream, timeout)
            if status != 101:
                stream.close()
                raise refusal(status, reason, body, f"{self.prefix}{address}")
            if response_headers.get("Sec-WebSocket-Accept") != websocket_accept(key):
                stream.close()
                raise FatalCommClosedError(f"{self.prefix}{address}: the hub's 101 answer does not match the request")
            channel = _bridge(stream) if hub_ssl is not None else stream
            channel = await asyncio.wait_for(channel.start_tls(False, ssl_options=cluster_ssl), timeout)
        except StreamClosedError as e:
            raise CommClosedError(f"{self.prefix}{address}: {e.real_error or e}") from None
        except ssl.SSLError as e:
            raise FatalCommClosedError(f"{self.prefix}{address}: TLS with the scheduler failed: {e}") from None
        local = channel.socket.getsockname() if channel.socket else ("", 0)
        return self.comm_class(channel, f"{self.prefix}{local[0]}:{local[1]}", self.prefix + address, deserialize)


class HubsTLSConnector(HubTLSConnector):
    prefix = "hubs://"
    hub_tls = True


class HubTLSBackend(_PathAware, TCPBackend):
    """``hub://host:port/<service>/clusters/<id>/tls``: connect-only (nothing listens on a hub address)."""

    _connector_class = HubTLSConnector

    def get_listener(self, loc: str, handle_comm: Any, deserialize: bool, **connection_args: Any) -> Any:
        raise ValueError(f"{self._connector_class.prefix} addresses are connect-only; listen on tcp:// or tls://")


class HubsTLSBackend(HubTLSBackend):
    _connector_class = HubsTLSConnector


def install_nodelay_ws() -> None:
    """Make this process's ``ws://``/``wss://`` comms hub-ready (idempotent).

    Replaces the ``ws``/``wss`` entries of distributed's comm registry with subclasses that differ
    only in setting TCP_NODELAY on connect and in accepting URL paths in addresses; listeners are
    unchanged (distributed's ``WSHandler`` already sets TCP_NODELAY server-side). Importing this
    module does it, because a nanny parses the scheduler address as soon as its preloads are
    imported, before any ``dask_setup`` runs.
    """
    if not isinstance(backends.get("ws"), NoDelayWSBackend):
        backends["ws"] = NoDelayWSBackend()
    if not isinstance(backends.get("wss"), NoDelayWSSBackend):
        backends["wss"] = NoDelayWSSBackend()
    backends.setdefault("hub", HubTLSBackend())
    backends.setdefault("hubs", HubsTLSBackend())


def authorization_args(token: str) -> dict[str, Any]:
    """``extra_conn_args`` carrying the token as an ``Authorization`` header on websocket connects."""
    return {"headers": {"Authorization": f"token {token}"}}


def hub_security(token: str, *, ca_file: str | None = None, ssl_context: ssl.SSLContext | None = None) -> Security:
    """A ``distributed.Security`` for connecting through the hub with a hub token.

    ``ca_file`` (or ``ssl_context``) is for ``wss://`` hubs whose certificate the system store does
    not trust. ``Security``'s repr never shows ``extra_conn_args``, so the token stays out of logs.
    """
    install_nodelay_ws()
    security = Security(tls_ca_file=ca_file, extra_conn_args=authorization_args(token))
    if ssl_context is not None:
        # Security builds its context from files; an explicit context wins for wss:// connects.
        security.extra_conn_args["ssl_options"] = ssl_context
    return security


def hub_connection_args(token: str, *, ssl_context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """``connection_args`` for ``distributed.comm.connect`` / ``rpc`` through the hub."""
    install_nodelay_ws()
    extra = authorization_args(token)
    if ssl_context is not None:
        extra["ssl_options"] = ssl_context
    return {"ssl_context": ssl_context, "require_encryption": False, "extra_conn_args": extra}


def read_worker_credential(environ: dict[str, str] | None = None) -> str:
    """The worker credential from ``CMSAF_WORKER_CREDENTIAL`` or the file ``CMSAF_WORKER_CREDENTIAL_FILE``."""
    environ = os.environ if environ is None else environ
    if environ.get(CREDENTIAL_ENV):
        return environ[CREDENTIAL_ENV].strip()
    path = environ.get(CREDENTIAL_FILE_ENV)
    if path:
        with open(path) as f:
            return f.read().strip()
    raise RuntimeError(f"cmsaf_hub.comm preload: set {CREDENTIAL_ENV} or {CREDENTIAL_FILE_ENV} to the cluster's worker credential")


def dask_setup(server: Any) -> None:
    """Worker/nanny preload: add the cluster credential to the server's websocket connects.

    Runs before the worker (or nanny) first contacts the scheduler. ``connection_args`` share the
    ``Security.extra_conn_args`` dict, so updating it in place reaches every connection pool.
    """
    install_nodelay_ws()
    server.security.extra_conn_args.update(authorization_args(read_worker_credential()))


def hub_worker_command(scheduler_url: str, *extra_args: str, python: str = sys.executable) -> list[str]:
    """The command line of an outbound-only worker joining through the hub.

    The credential must be in the worker's environment (:data:`CREDENTIAL_ENV` or
    :data:`CREDENTIAL_FILE_ENV`), never in its arguments. The worker listens on ``tcp`` so that
    worker-to-worker transfers stay direct.
    """
    return [
        python, "-m", "distributed.cli.dask_worker", scheduler_url,
        "--preload", "cmsaf_hub.comm", "--preload-nanny", "cmsaf_hub.comm",
        "--protocol", "tcp", *extra_args,
    ]


install_nodelay_ws()
