"""A transparent websocket relay: forward the upgrade handshake, then splice the two TCP streams.

Why not terminate the websocket in the service and re-send each message (tornado's
``WebSocketHandler`` on one side, ``websocket_connect`` on the other)? Dask sends every frame of a
message as its own websocket message, so a message-level relay pays parsing, (un)masking and a
full copy per message and serialises reads with writes; measured, it halved gather throughput.
Splicing keeps websocket semantics end to end (client-side masking, extensions and subprotocols are
negotiated by the two ends), which is what configurable-http-proxy itself does.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tornado.httputil import HTTPHeaders, parse_response_start_line
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

#: Request headers not forwarded upstream: the hub credentials (secrets the scheduler has no use
#: for), proxy hop headers, and Host (rewritten to the upstream's).
DROPPED_HANDSHAKE_HEADERS = frozenset(
    ("host", "authorization", "cookie", "proxy-authorization", "proxy-connection", "keep-alive", "te", "trailer")
)
MAX_HANDSHAKE_BYTES = 64 * 1024


class UpstreamRefused(Exception):
    """The upstream did not accept the websocket upgrade (unreachable, or not a 101)."""


@dataclass
class Upstream:
    """Where to splice to: a ``ws://`` or ``wss://`` URL (path and query included)."""

    url: str
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)

    @property
    def parts(self) -> tuple[str, int, str, bool]:
        u = urlsplit(self.url)
        tls = u.scheme in ("wss", "https")
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        return u.hostname or "127.0.0.1", u.port or (443 if tls else 80), path, tls


def handshake_request(upstream: Upstream, method: str, headers: HTTPHeaders) -> bytes:
    """The upgrade request sent upstream: the client's, minus credentials, with the upstream's Host."""
    host, port, path, _ = upstream.parts
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.get_all() if k.lower() not in DROPPED_HANDSHAKE_HEADERS]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def open_upstream(upstream: Upstream, request_head: bytes, timeout: float) -> tuple[IOStream, bytes]:
    """Connect, send the handshake, and return the stream and the upstream's raw 101 response head."""
    host, port, _, tls = upstream.parts
    try:
        ssl_options = (upstream.ssl_context or ssl.create_default_context()) if tls else None
        stream = await TCPClient().connect(host, port, ssl_options=ssl_options, timeout=timeout)
    except (OSError, StreamClosedError, asyncio.TimeoutError) as e:
        raise UpstreamRefused(f"cannot connect: {type(e).__name__}") from None
    stream.set_nodelay(True)
    try:
        await stream.write(request_head)
        head = await asyncio.wait_for(stream.read_until(b"\r\n\r\n", max_bytes=MAX_HANDSHAKE_BYTES), timeout)
    except (StreamClosedError, asyncio.TimeoutError) as e:
        stream.close()
        raise UpstreamRefused(f"no handshake response: {type(e).__name__}") from None
    status = parse_response_start_line(head.split(b"\r\n", 1)[0].decode("latin-1"))
    if status.code != 101:
        stream.close()
        raise UpstreamRefused(f"upstream answered {status.code} {status.reason}")
    return stream, head


async def _pipe(source: IOStream, sink: IOStream, chunk_size: int) -> None:
    """Copy bytes until either side closes; one chunk in flight, so memory stays bounded."""
    try:
        while True:
            data = await source.read_bytes(chunk_size, partial=True)
            await sink.write(data)
    except StreamClosedError:
        pass


async def splice(client: IOStream, upstream: IOStream, chunk_size: int) -> None:
    """Relay both directions until one side closes, then close both."""
    client.set_nodelay(True)
    for stream in (client, upstream):  # one socket read per chunk, not per 64 KiB
        stream.read_chunk_size = min(chunk_size, stream.max_buffer_size // 2)
    tasks = [asyncio.ensure_future(_pipe(client, upstream, chunk_size)),
             asyncio.ensure_future(_pipe(upstream, client, chunk_size))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        client.close()
        upstream.close()
        for task in tasks:
            task.cancel()
