"""The in-session token refresher: keeps ``$CMSAF_TOKEN_DIR/<name>.token`` fresh.

It never holds a refresh token. Shortly before the earliest expiry it asks the cluster service
(``GET <CMSAF_SERVICE_URL>api/v1/tokens``, authenticated with the session's own
``JUPYTERHUB_API_TOKEN``) for the user's current exchanged tokens; the service makes the hub run
the authenticator's ``refresh_user`` first when it is due, so refreshing happens in one place only.
Each file is then replaced atomically (temp file + rename, 0600). On errors it backs off
exponentially and keeps trying; logs name tokens and expiry times, never token values.

Run it on its own (``python -m spawners.refresher``, the Kubernetes sidecar) or beside the
notebook server (``python -m spawners.session -- jupyterhub-singleuser ...``, the local spawner).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .tokenfiles import ensure_token_dir, write_token_files
from .tokens import InvalidTokenBundle, earliest_expiry, session_tokens_from_service, token_files

log = logging.getLogger("cmsaf.refresher")

TOKENS_PATH = "api/v1/tokens"


@dataclass(frozen=True)
class RefreshPolicy:
    """When to ask again. Delays are seconds."""

    #: Ask this long before the earliest expiry (or at half the remaining life if that is later).
    margin: float = 120.0
    #: Never ask more often than this, even if the tokens are (nearly) expired.
    min_delay: float = 2.0
    #: Ask at least this often, so that tokens renewed hub-side early are picked up.
    max_delay: float = 1800.0
    #: First delay after a failure; doubled on each further failure up to ``retry_max``.
    retry_initial: float = 1.0
    retry_max: float = 30.0


def next_refresh_delay(expires_at: float | None, now: float, policy: RefreshPolicy) -> float:
    """Seconds until the next request, from the earliest expiry of the tokens just written."""
    if expires_at is None:
        return policy.max_delay
    remaining = expires_at - now
    delay = max(remaining - policy.margin, remaining / 2)
    return min(max(delay, policy.min_delay), policy.max_delay)


def retry_delay(failures: int, policy: RefreshPolicy) -> float:
    """Exponential backoff after ``failures`` consecutive failures (``failures >= 1``)."""
    return min(policy.retry_initial * 2 ** (failures - 1), policy.retry_max)


@dataclass
class RefresherConfig:
    """Where to ask and where to write; built from the session environment by :func:`from_env`."""

    service_url: str
    token_dir: str
    api_token: str = field(repr=False)
    policy: RefreshPolicy = field(default_factory=RefreshPolicy)
    request_timeout: float = 20.0
    ca_file: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "RefresherConfig":
        env = os.environ if env is None else env
        missing = [
            key
            for key in ("CMSAF_SERVICE_URL", "CMSAF_TOKEN_DIR", "JUPYTERHUB_API_TOKEN")
            if not env.get(key)
        ]
        if missing:
            raise ValueError(f"token refresher needs {', '.join(missing)} in its environment")
        return cls(
            service_url=env["CMSAF_SERVICE_URL"],
            token_dir=env["CMSAF_TOKEN_DIR"],
            api_token=env["JUPYTERHUB_API_TOKEN"],
            ca_file=env.get("CMSAF_SERVICE_CA_FILE") or None,
        )

    @property
    def tokens_url(self) -> str:
        return self.service_url.rstrip("/") + "/" + TOKENS_PATH


class RefreshError(Exception):
    """One refresh attempt failed; the message is safe to log (no token values)."""


class TokenRefresher:
    """Fetch, write, sleep, repeat. ``refreshed`` counts successful rounds (for observers)."""

    def __init__(self, config: RefresherConfig, clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.refreshed = 0
        self.failures = 0

    async def fetch_files(self) -> tuple[dict[str, str], float | None]:
        """Ask the service once: ``({filename: content}, earliest expiry)``."""
        request = HTTPRequest(
            self.config.tokens_url,
            headers={"Authorization": f"token {self.config.api_token}", "Accept": "application/json"},
            request_timeout=self.config.request_timeout,
            ca_certs=self.config.ca_file,
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            raise RefreshError(f"token endpoint answered {e.code}") from None
        except (OSError, asyncio.TimeoutError) as e:
            raise RefreshError(f"token endpoint unreachable: {type(e).__name__}: {e}") from None
        try:
            _issuer, tokens = session_tokens_from_service(json.loads(response.body))
        except (ValueError, InvalidTokenBundle) as e:
            raise RefreshError(f"token endpoint reply rejected: {e}") from None
        return token_files(tokens), earliest_expiry(tokens.values())

    async def refresh_once(self) -> float | None:
        """Fetch and write the files; return the earliest expiry of what was written.

        Tokens that are already expired count as a failure (the hub could not refresh them).
        """
        files, expires_at = await self.fetch_files()
        now = self.clock()
        if expires_at is not None and expires_at <= now:
            # The hub could not refresh them (IdP unreachable?): nothing worth writing; back off.
            raise RefreshError(f"token endpoint returned tokens expired {now - expires_at:.0f}s ago")
        loop = asyncio.get_running_loop()
        written = await loop.run_in_executor(
            None, write_token_files, self.config.token_dir, files
        )
        self.refreshed += 1
        log.info(
            "Token files checked: %d received, updated %s; earliest expiry in %s",
            len(files),
            ", ".join(written) or "none",
            _describe_remaining(expires_at, self.clock()),
        )
        return expires_at

    async def run(self) -> None:
        """Refresh forever (until cancelled), backing off on errors."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ensure_token_dir, self.config.token_dir)
        policy = self.config.policy
        while True:
            try:
                expires_at = await self.refresh_once()
            except RefreshError as e:
                self.failures += 1
                delay = retry_delay(self.failures, policy)
                log.warning("Token refresh failed (%s); retrying in %.1fs", e, delay)
            else:
                self.failures = 0
                delay = next_refresh_delay(expires_at, self.clock(), policy)
                log.debug("Next token refresh in %.1fs", delay)
            await asyncio.sleep(delay)


def _describe_remaining(expires_at: float | None, now: float) -> str:
    return "unknown time" if expires_at is None else f"{expires_at - now:.0f}s"


def main(argv: list[str] | None = None) -> int:
    """``python -m spawners.refresher``: run the refresher from the session environment."""
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname).1s %(asctime)s %(name)s] %(message)s"
    )
    try:
        config = RefresherConfig.from_env()
    except ValueError as e:
        log.error("%s", e)
        return 2
    try:
        asyncio.run(TokenRefresher(config).run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
