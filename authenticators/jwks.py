"""Verify IAM-issued JWTs against the issuer's JWKS, with a cache that follows key rotation.

Tokens reach the hub straight from IAM's token endpoint over TLS, but they are still verified: the
claims decide who the user is and which groups they hold, and exchanged tokens are handed on to
jobs and storage. Only asymmetric algorithms are accepted (``alg: none`` and HMAC are refused, so a
token "signed" with the public key as an HMAC secret never passes), and an unknown ``kid`` triggers
at most one JWKS refetch per ``min_refetch_interval`` so rotation works without letting forged
tokens hammer IAM.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.exceptions import InvalidKeyError, PyJWKError

# Asymmetric signature algorithms IAM may use. HMAC ("HS*") and "none" are never acceptable.
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)

JWKSFetcher = Callable[[], Awaitable[dict]]


class TokenRejected(Exception):
    """A JWT failed verification. ``reason`` is a short, token-free label (metrics/log friendly)."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"token rejected: {reason}" + (f" ({detail})" if detail else ""))


def unverified_header(token: str) -> dict:
    """The JOSE header, parsed without trusting it (used only to pick the key and algorithm)."""
    try:
        return jwt.get_unverified_header(token)
    except jwt.DecodeError:
        raise TokenRejected("malformed") from None


def unverified_claims(token: str) -> dict:
    """Claims without any verification: only for tokens whose trust was established otherwise."""
    try:
        return jwt.decode(token, options={"verify_signature": False})
    except jwt.DecodeError:
        raise TokenRejected("malformed") from None


@dataclass
class JWKSCache:
    """The issuer's signing keys by ``kid``, fetched on first use and refetched on an unknown ``kid``.

    ``fetch`` returns the parsed JWKS document (``{"keys": [...]}``); doing the HTTP request is the
    caller's business so that CA settings live in one place.
    """

    fetch: JWKSFetcher = field(repr=False)
    min_refetch_interval: float = 10.0
    _keys: dict[str, jwt.PyJWK] = field(default_factory=dict, repr=False)
    _fetched_at: float | None = field(default=None, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    fetch_count: int = 0

    @property
    def kids(self) -> list[str]:
        return sorted(self._keys)

    async def refresh(self) -> None:
        """Fetch the JWKS now and replace the cached keys (keys that fail to parse are skipped)."""
        document = await self.fetch()
        self.fetch_count += 1
        self._fetched_at = time.monotonic()
        self._keys = parse_jwks(document)

    async def key_for(self, kid: str | None) -> jwt.PyJWK:
        """The key for ``kid``; refetches once if it is unknown and the cache is old enough."""
        key = self._lookup(kid)
        if key is not None:
            return key
        async with self._lock:
            # another caller may have refetched while we waited for the lock
            key = self._lookup(kid)
            if key is not None:
                return key
            if self._fetched_at is None or (
                time.monotonic() - self._fetched_at >= self.min_refetch_interval
            ):
                await self.refresh()
                key = self._lookup(kid)
        if key is None:
            raise TokenRejected("unknown kid" if kid else "no kid")
        return key

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            # a kid-less token is only unambiguous when the issuer publishes a single key
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)


def parse_jwks(document: Any) -> dict[str, jwt.PyJWK]:
    """Signing keys of a JWKS document by ``kid``; encryption keys and unusable entries are skipped."""
    keys: dict[str, jwt.PyJWK] = {}
    entries = document.get("keys", []) if isinstance(document, dict) else []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") == "oct":
            continue  # a symmetric key in a JWKS is never a valid IAM signing key
        try:
            key = jwt.PyJWK(entry)
        except (PyJWKError, InvalidKeyError, ValueError, TypeError):
            continue
        keys[str(entry.get("kid", f"#{index}"))] = key
    return keys


# Which JWK key types can verify which algorithm family (the header's alg must match the key).
_KTY_FOR_ALG_PREFIX = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


@dataclass
class TokenVerifier:
    """Verifies signature, issuer, audience and time claims of JWTs from one issuer."""

    issuer: str
    jwks: JWKSCache = field(repr=False)
    algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS
    leeway: float = 30.0

    async def verify(
        self,
        token: str,
        audiences: Iterable[str] | None,
        required: Iterable[str] = ("exp", "iat", "iss"),
    ) -> dict:
        """The verified claims of ``token``, or :class:`TokenRejected` naming the reason.

        ``audiences``: accepted ``aud`` values (any one must match); ``None`` skips the audience
        check (only for tokens whose audience is checked elsewhere).
        """
        header = unverified_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise TokenRejected("alg none")
        if alg not in self.algorithms:
            raise TokenRejected("algorithm not allowed", alg)
        key = await self.jwks.key_for(header.get("kid"))
        key_type = _KTY_FOR_ALG_PREFIX.get(alg[:2])
        if key_type != key.key_type:
            raise TokenRejected("algorithm does not match key", alg)
        audience_list = sorted(set(audiences)) if audiences is not None else None
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                issuer=self.issuer,
                audience=audience_list or None,
                leeway=self.leeway,
                options={
                    "require": list(required) + (["aud"] if audience_list else []),
                    "verify_aud": audience_list is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("not yet valid") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("wrong issuer") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("wrong audience") from None
        except jwt.MissingRequiredClaimError as e:
            raise TokenRejected("missing claim", e.claim) from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("bad signature") from None
        except jwt.InvalidIssuedAtError:
            raise TokenRejected("issued in the future") from None
        except jwt.InvalidTokenError as e:
            # PyJWT's messages describe claims, never the token itself
            raise TokenRejected("invalid", type(e).__name__) from None

