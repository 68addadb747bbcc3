"""Asks a running scheduler, over its TLS comm, whether it is idle, how many workers it wants, and
to retire workers gracefully.

All are stock scheduler handlers (``check_idle``, ``adaptive_target``, ``retire_workers``), so this
works for any backend whose schedulers the service can reach; the cluster's own certificate
authenticates.
"""

from __future__ import annotations

import asyncio

from distributed.core import rpc
from distributed.security import Security


def client_security(cert: str, key: str) -> Security:
    """A Dask ``Security`` for the cluster's own certificate, given as PEM text."""
    return Security(tls_ca_file=cert, tls_client_cert=cert, tls_client_key=key, require_encryption=True)


class SchedulerProbe:
    def __init__(self, *, timeout: float = 10.0):
        self.timeout = timeout

    async def _call(self, address: str, cert: str, key: str, method: str):
        args = client_security(cert, key).get_connection_args("client")
        r = rpc(address, connection_args=args, timeout=self.timeout)
        try:
            return await getattr(r, method)()
        finally:
            await r.close_rpc()

    async def idle_since(self, address: str, cert: str, key: str) -> float | None:
        """Epoch seconds since when the scheduler has had nothing to do, or None when busy."""
        return await self._call(address, cert, key, "check_idle")

    async def retire_workers(self, address: str, cert: str, key: str, names: list[str]) -> None:
        """Let the scheduler move the named workers' results elsewhere and close them."""
        args = client_security(cert, key).get_connection_args("client")
        r = rpc(address, connection_args=args, timeout=self.timeout)
        try:
            await asyncio.wait_for(r.retire_workers(names=list(names), close_workers=True, remove=True), self.timeout)
        finally:
            await r.close_rpc()

    async def adaptive_target(self, address: str, cert: str, key: str) -> int:
        """How many workers the scheduler would like for its current load."""
        return int(await self._call(address, cert, key, "adaptive_target"))
