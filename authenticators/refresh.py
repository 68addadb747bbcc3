"""When to refresh, how to retry IAM, and how concurrent refreshes of one user collapse into one.

JupyterHub calls ``refresh_user`` at most every ``auth_refresh_age`` seconds per user; whether that
call talks to IAM is decided here, from the access token's real lifetime: refresh once less than the
*margin* remains. The margin is ``max(refresh_margin, refresh_margin_fraction * lifetime)``, capped
at half the lifetime so that short tokens are not refreshed on every check.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def refresh_margin(lifetime: float, minimum: float, fraction: float) -> float:
    """Seconds before expiry at which a token counts as due for refresh."""
    lifetime = max(float(lifetime), 0.0)
    return min(max(float(minimum), fraction * lifetime), lifetime / 2)


def refresh_due(
    expires_at: float | None, lifetime: float, now: float, minimum: float, fraction: float
) -> bool:
    """True when the access token expires within the margin (or its expiry is unknown)."""
    if expires_at is None:
        return True
    return expires_at - now <= refresh_margin(lifetime, minimum, fraction)


def fingerprint(secret: str | None) -> str | None:
    """A stable, non-reversible handle for a secret (to recognise a refresh token without holding it)."""
    if not secret:
        return None
    return hashlib.sha256(secret.encode()).hexdigest()[:32]


class RetryableError(Exception):
    """IAM could not be reached or answered 5xx: worth retrying; ``reason`` is a short label."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


async def with_backoff(
    operation: Callable[[], Awaitable[T]],
    attempts: int,
    base_delay: float,
    max_delay: float = 10.0,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> T:
    """Run ``operation``, retrying :class:`RetryableError` with jittered exponential backoff."""
    attempt = 0
    while True:
        try:
            return await operation()
        except RetryableError:
            attempt += 1
            if attempt >= attempts:
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1))
            await sleep(delay * (0.5 + random.random() / 2))


@dataclass
class SingleFlight:
    """At most one running call per key; concurrent callers for the same key share its result.

    The shared task is shielded, so one caller giving up (cancelled request) does not cancel the
    refresh the others are waiting for.
    """

    _running: dict[Hashable, asyncio.Task] = field(default_factory=dict, repr=False)

    def in_flight(self, key: Hashable) -> bool:
        return key in self._running

    async def run(self, key: Hashable, factory: Callable[[], Awaitable[T]]) -> T:
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(factory())
            self._running[key] = task
            task.add_done_callback(lambda _t, key=key: self._running.pop(key, None))
        return await asyncio.shield(task)


@dataclass
class ConsumedRefreshTokens:
    """Per user: the result obtained by spending a refresh token, kept until the next refresh.

    With rotation, a spent refresh token is dead. A request that read auth_state just before the hub
    stored the rotated one would spend it again and get ``invalid_grant``; instead it gets the result
    the first spender obtained.
    """

    _by_user: dict[str, tuple[str, Any]] = field(default_factory=dict, repr=False)

    def remember(self, user: str, refresh_token: str | None, result: Any) -> None:
        fp = fingerprint(refresh_token)
        if fp is not None:
            self._by_user[user] = (fp, result)

    def result_for(self, user: str, refresh_token: str | None) -> Any | None:
        entry = self._by_user.get(user)
        if entry is None or fingerprint(refresh_token) != entry[0]:
            return None
        return entry[1]
