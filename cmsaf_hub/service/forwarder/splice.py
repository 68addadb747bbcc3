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
import contextlib
import fcntl
import os
import socket
import ssl
import sys
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tornado.httputil import HTTPHeaders, parse_response_start_line
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError
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


# --- zero-copy splicing of plain TCP legs (the fast path, the dask-gateway proxy) -----------------

#: Bytes a kernel pipe holds between the two sockets (Linux caps it at /proc/sys/fs/pipe-max-size).
PIPE_SIZE = 1024 * 1024
#: Seconds the other direction may keep sending after one side closed its sending half.
HALF_CLOSE_TIMEOUT = 30.0
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


def can_splice_in_kernel() -> bool:
    """Linux's ``splice(2)`` is there (Python >= 3.10): bytes move socket -> pipe -> socket in the kernel."""
    return hasattr(os, "splice") and sys.platform.startswith("linux")


def take_socket(stream: IOStream) -> socket.socket:
    """The stream's connection as a plain non-blocking socket, the tornado stream closed.

    Duplicating the descriptor first keeps the connection open when the stream closes its own.
    """
    assert stream.socket is not None
    sock = socket.socket(fileno=os.dup(stream.socket.fileno()))
    stream.close()
    sock.setblocking(False)
    return sock


#: Bytes one direction moves per event-loop callback before it lets other connections run.
BURST = 4 * PIPE_SIZE


class KernelPipe:
    """One direction: ``splice`` from ``source`` into a kernel pipe and from it into ``sink`` until EOF.

    Driven by the event loop's readiness callbacks, registered once: while bytes flow, a wake-up
    costs two ``splice`` calls and no task, future or selector change. That per-wake cost is what
    every relayed round trip pays (a request and its answer each cross once), so it is kept to the
    syscalls. The source's reader is swapped for the sink's writer only while the sink is full.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, source: socket.socket, sink: socket.socket):
        self.loop, self.source, self.sink = loop, source.fileno(), sink.fileno()
        self._sink_socket = sink
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self.in_pipe = 0
        #: Resolved at EOF (the half-close passed on) or when the connection fails.
        self.done: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self.source, self._move)

    def _move(self) -> None:
        if self.done.done():
            return
        moved = 0
        try:
            while moved < BURST:
                if self.in_pipe:
                    try:
                        sent = os.splice(self.read_end, self.sink, self.in_pipe, flags=_SPLICE_FLAGS)
                    except BlockingIOError:  # the sink is full: wait for it, not for more input
                        self.loop.remove_reader(self.source)
                        self.loop.add_writer(self.sink, self._writable)
                        return
                    self.in_pipe -= sent
                    moved += sent
                    continue
                try:
                    self.in_pipe = os.splice(self.source, self.write_end, PIPE_SIZE, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    return  # drained; the reader stays registered
                if not self.in_pipe:  # EOF: pass the half-close on
                    with contextlib.suppress(OSError):
                        self._sink_socket.shutdown(socket.SHUT_WR)
                    self._finish()
                    return
            self.loop.call_soon(self._move)  # a long burst: let other callbacks run, then go on
        except OSError:  # reset, broken pipe: the connection is over
            self._finish()

    def _writable(self) -> None:
        self.loop.remove_writer(self.sink)
        if not self.done.done():
            self.loop.add_reader(self.source, self._move)
            self._move()

    def _finish(self) -> None:
        self.loop.remove_reader(self.source)
        self.loop.remove_writer(self.sink)
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        """Leave the selector and free the pipe; the sockets are the caller's."""
        self._finish()
        os.close(self.read_end)
        os.close(self.write_end)


async def splice_in_kernel(client: IOStream, upstream: IOStream) -> None:
    """:func:`splice` for two plain TCP streams, without the bytes ever entering Python.

    Each direction goes socket -> pipe -> socket with ``splice(2)``; the event loop only learns
    when a socket is readable or writable. Falls back to :func:`splice` where that is not possible
    (not Linux, or a TLS stream).
    """
    streams = (client, upstream)
    if (not can_splice_in_kernel() or any(isinstance(s, SSLIOStream) for s in streams)
            or any(s._read_buffer_size for s in streams)):  # bytes tornado read ahead must be relayed too
        await splice(client, upstream, PIPE_SIZE // 4)
        return
    a, b = take_socket(client), take_socket(upstream)
    for sock in (a, b):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    loop = asyncio.get_running_loop()
    pipes = [KernelPipe(loop, a, b), KernelPipe(loop, b, a)]
    try:
        await asyncio.wait([p.done for p in pipes], return_when=asyncio.FIRST_COMPLETED)
        # one side finished sending: give the other direction its remaining bytes, then close
        await asyncio.wait([p.done for p in pipes], timeout=HALF_CLOSE_TIMEOUT)
    finally:
        # both pipes must have left the event loop's selector before their sockets close: a closed
        # descriptor still registered there breaks whichever connection is given that number next
        for pipe in pipes:
            pipe.close()
        a.close()
        b.close()
