"""Keeping the owner's exchanged tokens fresh inside running clusters.

A cluster's scheduler and workers got the owner's tokens as files when they started (HTCondor input
files, the local backend's token directory). Clusters often live longer than one token lifetime, so
the reconciler asks this keeper, every ``interval``, which running clusters hold tokens close to
expiry, and pushes the owner's current tokens (from the hub's auth_state, which the authenticator
keeps refreshed) into them through the Dask scheduler (:mod:`cmsaf_hub.service.token_push`).

Expiry is read from the JWTs' ``exp`` claim without verifying them: only to schedule the next push.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import jwt
from distributed.security import Security
from traitlets import Float
from traitlets.config import LoggingConfigurable

from .token_push import push_tokens

TokensProvider = Callable[[str], Awaitable[dict[str, str]]]


def earliest_expiry(tokens: dict[str, str]) -> float | None:
    """The earliest ``exp`` among the tokens (epoch seconds), None when none carries one."""
    expiries = []
    for token in tokens.values():
        try:
            exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
        except jwt.PyJWTError:
            continue
        if isinstance(exp, (int, float)):
            expiries.append(float(exp))
    return min(expiries) if expiries else None


class ClusterTokenKeeper(LoggingConfigurable):
    """Decides when a running cluster needs fresh tokens and pushes them."""

    margin = Float(
        300,
        help="""Push fresh tokens into a running cluster when the ones it holds expire within this
        many seconds, or within half of their lifetime when that is shorter (short test tokens).""",
    ).tag(config=True)

    interval = Float(30, help="Seconds between checks of the running clusters' tokens.").tag(config=True)

    def __init__(self, *, tokens_provider: TokensProvider, **kwargs):
        super().__init__(**kwargs)
        self.tokens_provider = tokens_provider
        #: cluster id -> (when its tokens were pushed, their earliest expiry)
        self._held: dict[str, tuple[float, float]] = {}

    def due(self, cluster_id: str, now: float) -> bool:
        held = self._held.get(cluster_id)
        if held is None:  # never pushed by this process (new cluster, or the service restarted)
            return True
        pushed, expires = held
        return expires - now < min(self.margin, (expires - pushed) / 2)

    def forget(self, cluster_id: str) -> None:
        self._held.pop(cluster_id, None)

    async def refresh(self, cluster_id: str, owner: str, scheduler_address: str, security: Security) -> bool:
        """Push the owner's current tokens into the cluster; True when every process got them."""
        now = time.time()
        tokens = await self.tokens_provider(owner)
        expires = earliest_expiry(tokens)
        if not tokens or (expires is not None and expires <= now):
            # nothing better than what the cluster holds (the owner must log in again); look again
            # after half a margin rather than at every check
            self.log.warning("Cluster %s: no valid tokens of %s to push", cluster_id, owner)
            self._held[cluster_id] = (now, now + self.margin)
            return False
        result = await push_tokens(scheduler_address, security, tokens)
        for address, reason in result.failed.items():
            self.log.warning("Cluster %s: token files not written on %s: %s", cluster_id, address, reason)
        self._held[cluster_id] = (now, expires if expires is not None else now + 2 * self.margin)
        return result.ok
