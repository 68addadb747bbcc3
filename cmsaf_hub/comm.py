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
"""

from __future__ import annotations

import os
import ssl
import sys
from typing import Any

from distributed.comm.registry import backends
from distributed.comm.ws import WS, WSS, WSBackend, WSConnector, WSSBackend, WSSConnector
from distributed.security import Security

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
