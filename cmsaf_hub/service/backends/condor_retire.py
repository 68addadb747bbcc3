"""Graceful scale-down: ask the cluster's Dask scheduler to retire named workers before their jobs go.

Retiring first moves the workers' results to surviving workers; only then are their HTCondor jobs
removed. A scheduler that cannot be reached does not block the removal.
"""

from __future__ import annotations

import asyncio
import logging

from distributed.comm.core import CommClosedError
from distributed.core import rpc
from distributed.security import Security

log = logging.getLogger(__name__)


def cluster_security(tls: dict[str, str]) -> Security:
    """Client-side Dask security from a cluster's PEM material (inline, nothing written to disk)."""
    if not tls:
        return Security()
    return Security(
        tls_ca_file=tls.get("ca") or tls["cert"],
        tls_client_cert=tls["cert"],
        tls_client_key=tls["key"],
        require_encryption=True,
    )


async def retire_workers(address: str | None, tls: dict[str, str], names: list[str], *, timeout: float) -> int:
    """Retire ``names`` through the scheduler at ``address``; return how many it retired."""
    if not address or not names:
        return 0
    args = cluster_security(tls).get_connection_args("client")
    try:
        async with rpc(address, connection_args=args, timeout=timeout) as scheduler:
            retired = await asyncio.wait_for(
                scheduler.retire_workers(names=list(names), close_workers=True, remove=True), timeout
            )
    except (OSError, asyncio.TimeoutError, CommClosedError) as e:
        log.warning("Could not retire %d workers through %s (%s); removing their jobs anyway",
                    len(names), address, type(e).__name__)
        return 0
    return len(retired)
