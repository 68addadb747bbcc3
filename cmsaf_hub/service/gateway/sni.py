"""The scheduler proxy dask-gateway's client expects: TLS passthrough routed by SNI.

A ``gateway://host:port/<name>`` address makes the ``dask-gateway`` client open TCP to
``host:port`` and start TLS with the server name ``daskgateway-<name>``, presenting the cluster's
certificate (which the API gave it). This listener reads the ClientHello without terminating TLS,
takes the cluster name from the SNI extension, and splices the connection, ClientHello included,
to that cluster's scheduler TLS listener. The TLS session is therefore between the client and the
scheduler; the scheduler accepts only the cluster's own certificate, which the API hands to the
cluster's owner and hub admins only. That is how ownership is enforced here: nothing but a holder
of that cluster's key completes the handshake (dask-gateway-server's model too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from distributed.comm.addressing import parse_address, parse_host_port
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient
from tornado.tcpserver import TCPServer

from ..forwarder.splice import splice_in_kernel

#: TLS record type of handshake messages, and the ClientHello handshake type.
HANDSHAKE_RECORD, CLIENT_HELLO = 22, 1
#: The largest ClientHello read before routing (a few records; real ones are well under 2 KiB).
MAX_CLIENT_HELLO = 64 * 1024
#: Server names the dask-gateway client sends: this prefix, then the cluster name.
SNI_PREFIX = "daskgateway-"

#: ``await resolve(cluster_name)`` -> the scheduler's TLS address (``tls://host:port``), or None.
SchedulerResolver = Callable[[str], Awaitable["str | None"]]


class NotAClientHello(ValueError):
    """The first bytes are not a TLS ClientHello this proxy can route."""


async def read_client_hello(stream: IOStream) -> tuple[bytes, bytes]:
    """``(raw bytes read, the ClientHello handshake message)``, reassembled across records."""
    raw = bytearray()
    message = bytearray()
    while True:
        header = await stream.read_bytes(5)
        raw += header
        if header[0] != HANDSHAKE_RECORD:
            raise NotAClientHello("not a TLS handshake")
        length = int.from_bytes(header[3:5], "big")
        if not length or len(raw) + length > MAX_CLIENT_HELLO:
            raise NotAClientHello("TLS record too large for a ClientHello")
        fragment = await stream.read_bytes(length)
        raw += fragment
        message += fragment
        if len(message) >= 4:
            if message[0] != CLIENT_HELLO:
                raise NotAClientHello("first handshake message is not a ClientHello")
            if len(message) >= 4 + int.from_bytes(message[1:4], "big"):
                return bytes(raw), bytes(message)


def server_name(client_hello: bytes) -> str | None:
    """The ``host_name`` of a ClientHello's server_name extension (RFC 6066), or None."""
    b = memoryview(client_hello)
    try:
        p = 4 + 2 + 32  # handshake header, client_version, random
        p += 1 + b[p]  # session_id
        p += 2 + int.from_bytes(b[p:p + 2], "big")  # cipher_suites
        p += 1 + b[p]  # compression_methods
        end = p + 2 + int.from_bytes(b[p:p + 2], "big")
        p += 2
        while p + 4 <= end:
            ext_type, ext_len = int.from_bytes(b[p:p + 2], "big"), int.from_bytes(b[p + 2:p + 4], "big")
            p += 4
            if ext_type == 0:  # server_name: a list of (type, length, name)
                q, stop = p + 2, p + ext_len
                while q + 3 <= stop:
                    name_type, name_len = b[q], int.from_bytes(b[q + 1:q + 3], "big")
                    if name_type == 0:
                        return bytes(b[q + 3:q + 3 + name_len]).decode("ascii")
                    q += 3 + name_len
                return None
            p += ext_len
    except (IndexError, UnicodeDecodeError):
        raise NotAClientHello("malformed ClientHello") from None
    return None


def cluster_name(sni: str | None) -> str | None:
    """``daskgateway-<name>`` -> ``<name>``; None for any other server name."""
    if not sni or not sni.startswith(SNI_PREFIX) or len(sni) == len(SNI_PREFIX):
        return None
    return sni[len(SNI_PREFIX):]


class SNIPassthrough(TCPServer):
    """Accepts ``gateway://`` connections and splices each to its cluster's scheduler, unread."""

    def __init__(self, resolve: SchedulerResolver, *, log: logging.Logger, handshake_timeout: float = 10.0,
                 connect_timeout: float = 10.0):
        super().__init__()
        self.resolve = resolve
        self.log = log
        self.handshake_timeout = handshake_timeout
        self.connect_timeout = connect_timeout

    async def handle_stream(self, stream: IOStream, address: tuple) -> None:
        stream.set_nodelay(True)
        try:
            raw, hello = await asyncio.wait_for(read_client_hello(stream), self.handshake_timeout)
            name = cluster_name(server_name(hello))
        except (NotAClientHello, StreamClosedError, asyncio.TimeoutError) as e:
            self.log.info("gateway proxy: %s dropped: %s", address[0], e or type(e).__name__)
            stream.close()
            return
        scheduler = await self.resolve(name) if name else None
        if scheduler is None:
            # no such running cluster: close before any byte reaches a scheduler (the client sees a
            # failed handshake; whether the name exists is not revealed)
            self.log.info("gateway proxy: %s asked for %r: no running cluster", address[0], name)
            stream.close()
            return
        host, port = parse_host_port(parse_address(scheduler)[1])
        try:
            upstream = await TCPClient().connect(host, port, timeout=self.connect_timeout)
            upstream.set_nodelay(True)
            await upstream.write(raw)
        except (OSError, StreamClosedError, asyncio.TimeoutError) as e:
            self.log.warning("gateway proxy: scheduler of %s unreachable: %s", name, type(e).__name__)
            stream.close()
            return
        await splice_in_kernel(stream, upstream)
