"""The two routes of a cluster: its dashboard (HTTP and Bokeh websockets) and its scheduler comm."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from distributed.comm.addressing import parse_address, parse_host_port
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.tcpclient import TCPClient

from ...comm import websocket_accept
from .base import ForwarderHandler
from .splice import splice_in_kernel
from .target import Target

#: Request headers never sent to a dashboard: hop-by-hop ones, and the hub credentials (secrets the
#: scheduler has no use for).
DROPPED_REQUEST_HEADERS = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
              "Transfer-Encoding", "Upgrade", "Host", "Authorization", "Cookie", "Content-Length")
)
DROPPED_RESPONSE_HEADERS = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Transfer-Encoding", "Content-Length", "Server", "Date", "Set-Cookie")
)


class _BodyTooLarge(Exception):
    pass


def upstream_ws_url(http_root: str, uri: str) -> str:
    """``http://host:port`` + ``/path?query`` -> ``ws://host:port/path?query`` (https -> wss)."""
    root = http_root.rstrip("/")
    if root.startswith("https://"):
        return "wss://" + root[len("https://"):] + uri
    return "ws://" + root.removeprefix("http://") + uri


class DashboardHandler(ForwarderHandler):
    """``<prefix>/clusters/<id>/dashboard/<path>``: the cluster's dashboard, paths passed through as-is.

    The scheduler serves its dashboard under :func:`~cmsaf_hub.service.forwarder.target.dashboard_prefix`, so
    the public path *is* the upstream path and every link the dashboard renders stays valid.
    """

    async def get(self, cluster_id: str, path: str = "") -> None:
        target = await self.admit(cluster_id, accept_worker_credential=False)
        if not target.dashboard_address:
            raise web.HTTPError(503)
        if self.is_websocket_request():
            await self.relay_websocket(upstream_ws_url(target.dashboard_address, self.request.uri or "/"))
        else:
            await self.proxy_http(target)

    async def head(self, cluster_id: str, path: str = "") -> None:
        target = await self.admit(cluster_id, accept_worker_credential=False)
        if not target.dashboard_address:
            raise web.HTTPError(503)
        await self.proxy_http(target)

    async def proxy_http(self, target: Target) -> None:
        """One buffered request/response, bounded by ``Forwarder.max_body_size``."""
        assert target.dashboard_address
        root = target.dashboard_address.rstrip("/")
        headers = {k: v for k, v in self.request.headers.get_all() if k.lower() not in DROPPED_REQUEST_HEADERS}
        chunks: list[bytes] = []
        size = 0

        def collect(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)
            if size > self.forwarder.max_body_size:
                raise _BodyTooLarge()
            chunks.append(chunk)

        request = HTTPRequest(
            root + (self.request.uri or "/"),
            method=self.request.method,
            headers=headers,
            follow_redirects=False,
            decompress_response=False,
            connect_timeout=self.forwarder.connect_timeout,
            request_timeout=self.forwarder.dashboard_request_timeout,
            streaming_callback=collect,
            ssl_options=target.upstream_ssl,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except _BodyTooLarge:
            raise web.HTTPError(502, reason="Dashboard response too large") from None
        except (OSError, StreamClosedError, HTTPClientError) as e:
            self.log.warning("forwarder: dashboard of %s unreachable: %s", target.cluster_id, type(e).__name__)
            raise web.HTTPError(503) from None
        if response.code == 599:  # tornado's "no HTTP response" (timeout, reset)
            raise web.HTTPError(503)
        self.set_status(response.code, response.reason)
        self._headers.clear()
        for name, value in response.headers.get_all():
            if name.lower() in DROPPED_RESPONSE_HEADERS:
                continue
            if name.lower() == "location" and value.startswith(root):
                value = value[len(root):] or "/"
            self.add_header(name, value)
        if self.request.method != "HEAD" and response.code not in (204, 304):
            self.write(b"".join(chunks))
        self.finish()


class CommRelayHandler(ForwarderHandler):
    """``<prefix>/clusters/<id>/comm``: a websocket relay to the scheduler's ``ws://`` listener.

    ``distributed`` clients authenticate with their hub token, workers with the cluster's worker
    credential; both as ``Authorization: token <value>``.
    """

    async def get(self, cluster_id: str, *args: Any) -> None:
        if not self.is_websocket_request():
            raise web.HTTPError(400, reason="Connect with a Dask ws:// or wss:// comm")
        target = await self.admit(cluster_id, accept_worker_credential=True)
        if not target.scheduler_ws_address:
            raise web.HTTPError(503)
        await self.relay_websocket(target.scheduler_ws_address.rstrip("/") + "/")


class TLSRelayHandler(ForwarderHandler):
    """``<prefix>/clusters/<id>/tls``: the fast path, Dask's TLS comm spliced raw to the scheduler.

    A websocket upgrade request (hub token, or the cluster's worker credential) is answered ``101``
    by the service itself once access is decided and the scheduler's TLS listener accepted a TCP
    connection; from then on both sockets are spliced byte for byte, and the client runs its TLS
    session with the scheduler (the cluster's certificate) inside. Every proxy in front (CHP, an
    nginx ingress) passes an upgraded connection through untouched, so what it costs is a splice.

    A plain ``GET`` with a token answers the cluster's certificate and key (``{"tls_cert",
    "tls_key"}``, PEM): what that TLS session needs, owner and admins only, like the relay.
    """

    async def get(self, cluster_id: str) -> None:
        if not self.is_websocket_request():
            await self.send_credentials(cluster_id)
            return
        key = self.request.headers.get("Sec-WebSocket-Key", "")
        if not key:
            raise web.HTTPError(400, reason="Missing Sec-WebSocket-Key")
        target = await self.admit(cluster_id, accept_worker_credential=True)
        if not target.scheduler_tls_address:
            raise web.HTTPError(503)
        _, loc = parse_address(target.scheduler_tls_address)
        host, port = parse_host_port(loc)
        try:
            upstream = await TCPClient().connect(host, port, timeout=self.forwarder.connect_timeout)
        except (OSError, StreamClosedError, asyncio.TimeoutError) as e:
            self.log.warning("forwarder: scheduler of %s unreachable: %s", cluster_id, type(e).__name__)
            raise web.HTTPError(503) from None
        upstream.set_nodelay(True)
        client = self.detach()
        head = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {websocket_accept(key)}\r\n\r\n")
        try:
            await client.write(head.encode("latin-1"))
        except StreamClosedError:
            upstream.close()
            return
        await splice_in_kernel(client, upstream)

    async def send_credentials(self, cluster_id: str) -> None:
        """The cluster's TLS certificate and key, to a token-bearing owner, admin or the cluster's workers."""
        if not self.presented_token():
            raise web.HTTPError(401)  # never on a cookie alone: no page of another site may fetch a key
        target = await self.admit(cluster_id, accept_worker_credential=True)
        if target.tls_pem is None:
            raise web.HTTPError(503)
        cert, key = target.tls_pem
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"tls_cert": cert, "tls_key": key}))
