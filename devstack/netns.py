"""Network namespaces for tests and benchmarks: a "site" that reaches one host address and nothing else.

:func:`create_site` makes a namespace joined to the host by a veth pair with a private ``/30``: the
host side holds ``.1``, the namespace ``.2``; there is no default route, so from inside only the
host-side address is reachable. :class:`PortForward` listens on that address and forwards to a
loopback port (the hub's proxy), so the site reaches the hub and nothing else of the host that
listens on loopback. Needs root and ``ip`` (Debian ``iproute2``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import shutil
import subprocess
from dataclasses import dataclass


class NetnsError(RuntimeError):
    pass


def _ip(*args: str) -> str:
    if shutil.which("ip") is None:
        raise NetnsError("the 'ip' command is missing: install Debian iproute2")
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class Site:
    """A namespace and its veth pair (names are at most 15 characters, as Linux requires)."""

    name: str
    host_if: str
    site_if: str
    host_ip: str
    site_ip: str

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


def _free_subnet() -> ipaddress.IPv4Network:
    used = _ip("-4", "-o", "addr", "show")
    for _ in range(64):
        net = ipaddress.IPv4Network(f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}.{4 * secrets.randbelow(64)}/30")
        if str(net.network_address)[:-1] not in used:
            return net
    raise NetnsError("no free private /30 found")


def create_site(prefix: str = "cmsaf") -> Site:
    """A new namespace reaching only the host side of its veth pair."""
    tag = secrets.token_hex(3)
    net = _free_subnet()
    host_ip, site_ip = (str(a) for a in list(net.hosts()))
    site = Site(f"{prefix}-{tag}", f"{prefix[:4]}h{tag}", f"{prefix[:4]}n{tag}", host_ip, site_ip)
    _ip("netns", "add", site.name)
    try:
        _ip("link", "add", site.host_if, "type", "veth", "peer", "name", site.site_if)
        _ip("link", "set", site.site_if, "netns", site.name)
        _ip("addr", "add", f"{host_ip}/30", "dev", site.host_if)
        _ip("link", "set", site.host_if, "up")
        _ip("netns", "exec", site.name, "ip", "addr", "add", f"{site_ip}/30", "dev", site.site_if)
        _ip("netns", "exec", site.name, "ip", "link", "set", site.site_if, "up")
        _ip("netns", "exec", site.name, "ip", "link", "set", "lo", "up")
    except NetnsError:
        remove_site(site)
        raise
    return site


def remove_site(site: Site) -> None:
    """Delete the veth pair (both ends) and the namespace; missing pieces are fine."""
    with contextlib.suppress(NetnsError):
        _ip("link", "del", site.host_if)
    with contextlib.suppress(NetnsError):
        _ip("netns", "del", site.name)


def site_exists(site: Site) -> bool:
    return site.name in _ip("netns", "list").split() or site.host_if in _ip("-o", "link", "show")


class PortForward:
    """TCP forwarder ``listen_host:<port>`` -> ``target_host:target_port`` (the hub as the site sees it)."""

    def __init__(self, listen_host: str, target_host: str, target_port: int, *, connect_timeout: float = 10.0):
        self.listen_host = listen_host
        self.target = (target_host, target_port)
        self.connect_timeout = connect_timeout
        self.server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def start(self) -> PortForward:
        self.server = await asyncio.start_server(self._handle, self.listen_host, 0)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), self.connect_timeout)
        except (OSError, asyncio.TimeoutError):
            writer.close()
            return
        pipes = [asyncio.ensure_future(self._pipe(reader, up_writer)), asyncio.ensure_future(self._pipe(up_reader, writer))]
        self._tasks.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
                self._tasks.discard(pipe)
            writer.close()
            up_writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(1 << 20):
                writer.write(data)
                await writer.drain()
