"""RFC 8693 token exchange: what to ask IAM for, and how results merge into auth_state.

The hub exchanges each user's access token for narrower tokens (HTCondor, XRootD, ...) at login and
at every refresh. Exchanges run concurrently and fail independently: a failed audience keeps its
last good token (until that token really expires), the others still update.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


@dataclass(frozen=True)
class ExchangeSpec:
    """One configured exchange: a name (the token file's name in sessions), audience and scope."""

    name: str
    audience: str
    scope: str


class ExchangeFailed(Exception):
    """One exchange did not yield a usable token; ``reason`` is a short label for logs/metrics."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason
        super().__init__(f"token exchange {name!r} failed: {reason}")


def parse_exchange_specs(config: Mapping[str, Any]) -> dict[str, ExchangeSpec]:
    """Validate the ``token_exchanges`` traitlet value; ValueError with a one-line message if bad."""
    specs: dict[str, ExchangeSpec] = {}
    for name, entry in config.items():
        if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"token_exchanges: name {name!r} must be alphanumeric (- and _ allowed)")
        if not isinstance(entry, Mapping):
            raise ValueError(f"token_exchanges[{name!r}] must be a dict with 'audience' and 'scope'")
        unknown = set(entry) - {"audience", "scope"}
        if unknown:
            raise ValueError(f"token_exchanges[{name!r}]: unknown keys {sorted(unknown)}")
        audience, scope = entry.get("audience"), entry.get("scope", "")
        if not isinstance(audience, str) or not audience:
            raise ValueError(f"token_exchanges[{name!r}]: 'audience' must be a non-empty string")
        if not isinstance(scope, str):
            raise ValueError(f"token_exchanges[{name!r}]: 'scope' must be a space-separated string")
        specs[name] = ExchangeSpec(name=name, audience=audience, scope=" ".join(scope.split()))
    return specs


def build_exchange_params(
    subject_token: str, spec: ExchangeSpec, client_credentials: Mapping[str, str]
) -> dict[str, str]:
    """Form body of the RFC 8693 request (``client_credentials`` empty when basic auth is used)."""
    params = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "requested_token_type": ACCESS_TOKEN_TYPE,
        "audience": spec.audience,
    }
    if spec.scope:
        params["scope"] = spec.scope
    params.update(client_credentials)
    return params


def exchanged_entry(
    spec: ExchangeSpec, access_token: str, expires_at: float, granted_scope: str | None
) -> dict[str, Any]:
    """One ``auth_state["exchanged_tokens"][name]`` value, as docs/architecture.md defines it."""
    return {
        "access_token": access_token,
        "expires_at": float(expires_at),
        "audience": spec.audience,
        "scope": " ".join((granted_scope or spec.scope).split()),
    }


def merge_exchanged(
    previous: Mapping[str, Mapping[str, Any]] | None,
    fresh: Mapping[str, Mapping[str, Any]],
    failed: Mapping[str, str],
    now: float | None = None,
) -> dict[str, dict[str, Any]]:
    """New ``exchanged_tokens``: fresh results, plus the last good token of each failed exchange.

    A kept token keeps its real ``expires_at``; once expired it is dropped rather than handed on.
    Names that are neither fresh nor failed (removed from config) are dropped.
    """
    now = time.time() if now is None else now
    merged = {name: dict(entry) for name, entry in fresh.items()}
    for name in failed:
        old = (previous or {}).get(name)
        if old and float(old.get("expires_at", 0)) > now:
            merged[name] = dict(old)
    return merged


@dataclass
class ExchangeOutcome:
    """What one round of exchanges produced: fresh entries by name, failure reasons by name."""

    fresh: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    failed: dict[str, str] = field(default_factory=dict)


async def exchange_all(
    specs: Mapping[str, ExchangeSpec],
    exchange_one: Callable[[ExchangeSpec], Awaitable[dict[str, Any]]],
) -> ExchangeOutcome:
    """Run ``exchange_one`` for every spec concurrently; one failure never stops the others."""
    names = list(specs)
    results = await asyncio.gather(
        *(exchange_one(specs[name]) for name in names), return_exceptions=True
    )
    outcome = ExchangeOutcome()
    for name, result in zip(names, results):
        if isinstance(result, ExchangeFailed):
            outcome.failed[name] = result.reason
        elif isinstance(result, BaseException):
            if isinstance(result, asyncio.CancelledError):
                raise result
            outcome.failed[name] = type(result).__name__
        else:
            outcome.fresh[name] = result
    return outcome
