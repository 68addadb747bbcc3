"""OpenID Connect discovery: IAM's endpoints come from its ``.well-known`` document, never hard-coded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .exchange import TOKEN_EXCHANGE_GRANT


class DiscoveryFailed(Exception):
    """IAM's discovery document could not be fetched or is unusable (message is user-presentable)."""


@dataclass(frozen=True)
class ProviderEndpoints:
    """What the hub needs from the discovery document."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str = ""
    #: RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0); empty if not announced
    end_session_endpoint: str = ""
    supports_token_exchange: bool = False


def discovery_url(issuer: str) -> str:
    """``<issuer>/.well-known/openid-configuration`` (RFC 8414 / OIDC Discovery 1.0 §4)."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def parse_discovery(document: Any, issuer: str) -> ProviderEndpoints:
    """Validate the discovery document of ``issuer``; DiscoveryFailed with a one-line reason if bad.

    The document's ``issuer`` must be the configured one (ignoring a trailing slash): a mismatch
    means the configuration points at the wrong IAM, and tokens would fail verification anyway.
    """
    if not isinstance(document, Mapping):
        raise DiscoveryFailed(f"the discovery document of {issuer} is not a JSON object")
    announced = document.get("issuer")
    if not isinstance(announced, str) or announced.rstrip("/") != issuer.rstrip("/"):
        raise DiscoveryFailed(f"{discovery_url(issuer)} announces issuer {announced!r}, expected {issuer!r}")
    missing = [
        key
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri")
        if not isinstance(document.get(key), str) or not document[key]
    ]
    if missing:
        raise DiscoveryFailed(f"the discovery document of {issuer} lacks {', '.join(missing)}")
    grants = document.get("grant_types_supported") or []
    return ProviderEndpoints(
        issuer=announced,
        authorization_endpoint=document["authorization_endpoint"],
        token_endpoint=document["token_endpoint"],
        jwks_uri=document["jwks_uri"],
        userinfo_endpoint=document.get("userinfo_endpoint") or "",
        end_session_endpoint=document.get("end_session_endpoint") or "",
        supports_token_exchange=TOKEN_EXCHANGE_GRANT in grants,
    )
