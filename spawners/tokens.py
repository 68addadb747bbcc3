"""What a session gets: its token files and its environment, as pure functions.

This module is the ONE place that decides which tokens may leave the hub for a session: only the
audience-scoped ``exchanged_tokens`` of ``auth_state`` (or of the service's token endpoint, which
returns the same shape). The login access token, the refresh token, the ID token and the hub's
client secret are never read here, so they cannot end up in a session's files or environment.

Both spawners and the in-session refresher build on these functions; none of them does I/O.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

#: A token name becomes a file name ``<name>.token``: keep it to a safe, boring alphabet.
TOKEN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Environment variable names accepted from configuration (the XRootD/XCache map).
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TOKEN_FILE_SUFFIX = ".token"
#: Which token ``BEARER_TOKEN_FILE`` points at when the configured one is absent, in order.
DEFAULT_BEARER_PREFERENCE = ("xrootd", "condor")


class MissingAuthState(Exception):
    """The user has no stored login state, so there are no tokens to give the session."""

    def __init__(self, username: str):
        super().__init__(
            f"No stored login tokens for {username} (auth state is empty): "
            "log out, log in again, then start your server."
        )


class InvalidTokenBundle(ValueError):
    """Token data did not have the documented shape; the message never holds token values."""


@dataclass(frozen=True)
class SessionToken:
    """One audience-scoped token a session may hold. ``repr`` never shows the token."""

    name: str
    access_token: str = field(repr=False)
    expires_at: float | None = None
    audience: str | None = None
    scope: str | None = None

    @property
    def filename(self) -> str:
        return token_filename(self.name)


def token_filename(name: str) -> str:
    """The file name holding token ``name`` inside the session's token directory."""
    if not TOKEN_NAME_PATTERN.match(name):
        raise InvalidTokenBundle(f"token name {name!r} is not a safe file name")
    return name + TOKEN_FILE_SUFFIX


def parse_exchanged_tokens(exchanged: Any) -> dict[str, SessionToken]:
    """Validate an ``exchanged_tokens`` mapping ``{name: {access_token, expires_at, ...}}``."""
    if exchanged is None:
        return {}
    if not isinstance(exchanged, Mapping):
        raise InvalidTokenBundle("exchanged tokens must be a mapping of name to token")
    tokens: dict[str, SessionToken] = {}
    for name, entry in exchanged.items():
        if not isinstance(name, str):
            raise InvalidTokenBundle("token names must be strings")
        token_filename(name)  # validates the name
        if not isinstance(entry, Mapping):
            raise InvalidTokenBundle(f"token {name!r} is not a mapping")
        access_token = entry.get("access_token")
        if not isinstance(access_token, str) or not access_token.strip():
            raise InvalidTokenBundle(f"token {name!r} has no access_token string")
        expires_at = entry.get("expires_at")
        if expires_at is not None and (
            isinstance(expires_at, bool) or not isinstance(expires_at, (int, float))
        ):
            raise InvalidTokenBundle(f"token {name!r} has a non-numeric expires_at")
        tokens[name] = SessionToken(
            name=name,
            access_token=access_token.strip(),
            expires_at=float(expires_at) if expires_at is not None else None,
            audience=_optional_str(entry.get("audience")),
            scope=_optional_str(entry.get("scope")),
        )
    return tokens


def session_tokens_from_auth_state(
    auth_state: Mapping[str, Any] | None, username: str
) -> dict[str, SessionToken]:
    """The tokens a session may get from the hub's ``auth_state``: only ``exchanged_tokens``."""
    if not auth_state:
        raise MissingAuthState(username)
    return parse_exchanged_tokens(auth_state.get("exchanged_tokens"))


def session_tokens_from_service(payload: Any) -> tuple[str | None, dict[str, SessionToken]]:
    """Parse the service's ``GET api/v1/tokens`` reply into ``(issuer, tokens)``."""
    if not isinstance(payload, Mapping):
        raise InvalidTokenBundle("token endpoint reply is not a JSON object")
    if "tokens" not in payload:
        raise InvalidTokenBundle("token endpoint reply has no 'tokens'")
    return _optional_str(payload.get("issuer")), parse_exchanged_tokens(payload["tokens"])


def token_files(tokens: Mapping[str, SessionToken]) -> dict[str, str]:
    """``{filename: content}`` for the session's token directory (one JWT and a newline each)."""
    return {token.filename: token.access_token + "\n" for token in tokens.values()}


def earliest_expiry(tokens: Iterable[SessionToken]) -> float | None:
    """The first ``expires_at`` among the tokens, or None when none is known."""
    expiries = [t.expires_at for t in tokens if t.expires_at is not None]
    return min(expiries) if expiries else None


@dataclass(frozen=True)
class SessionSettings:
    """Everything (besides the tokens) that shapes a session's environment."""

    token_dir: str
    issuer: str = ""
    service_url: str = ""
    bearer_token_name: str = ""
    condor_token_name: str = "condor"
    condor_auth_methods: str = "SCITOKENS"
    condor_collector_host: str = ""
    condor_schedd_host: str = ""
    condor_schedd_name: str = ""
    condor_ca_file: str = ""
    xrootd_env: Mapping[str, str] = field(default_factory=dict)
    dask_factory_module: str = "cmsaf_hub.client"
    dask_factory_class: str = "HubCluster"
    dask_security_loader: str = "cmsaf_hub.client.security.security_loader"
    #: ``host:port`` of the service's dask-gateway scheduler proxy as sessions reach it; empty: the
    #: service URL's host on :data:`DEFAULT_GATEWAY_PROXY_PORT` (docs/dask-gateway.md).
    dask_gateway_proxy_address: str = ""


def choose_bearer_token(token_names: Iterable[str], configured: str = "") -> str | None:
    """The token ``BEARER_TOKEN_FILE`` points at: the configured one, else xrootd, else condor."""
    names = set(token_names)
    for candidate in (configured, *DEFAULT_BEARER_PREFERENCE):
        if candidate and candidate in names:
            return candidate
    return None


def session_env(settings: SessionSettings, token_names: Iterable[str]) -> dict[str, str]:
    """The session environment of ``docs/architecture.md``; unset settings are omitted."""
    names = set(token_names)
    env: dict[str, str] = {}
    for key, value in settings.xrootd_env.items():
        if not ENV_NAME_PATTERN.match(key):
            raise ValueError(f"xrootd_env key {key!r} is not a valid environment variable name")
        env[key] = str(value)

    env["CMSAF_TOKEN_DIR"] = settings.token_dir
    bearer = choose_bearer_token(names, settings.bearer_token_name)
    if bearer:
        env["BEARER_TOKEN_FILE"] = token_path(settings.token_dir, bearer)
    if settings.condor_token_name in names:
        env["_condor_SCITOKENS_FILE"] = token_path(settings.token_dir, settings.condor_token_name)
        if settings.condor_auth_methods:
            env["_condor_SEC_CLIENT_AUTHENTICATION_METHODS"] = settings.condor_auth_methods
    optional = {
        "_condor_COLLECTOR_HOST": settings.condor_collector_host,
        "_condor_SCHEDD_HOST": settings.condor_schedd_host,
        "_condor_SCHEDD_NAME": settings.condor_schedd_name,
        "_condor_AUTH_SSL_CLIENT_CAFILE": settings.condor_ca_file,
        "CMSAF_ISSUER": settings.issuer,
        "CMSAF_SERVICE_URL": settings.service_url,
        "DASK_LABEXTENSION__FACTORY__MODULE": settings.dask_factory_module,
        "DASK_LABEXTENSION__FACTORY__CLASS": settings.dask_factory_class,
        # lets the sidebar's injected ``Client("ws://…/comm")`` code authenticate as pasted
        "DASK_DISTRIBUTED__CLIENT__SECURITY_LOADER": settings.dask_security_loader,
    }
    env.update({key: value for key, value in optional.items() if value})
    if settings.service_url:
        env.update(dask_gateway_env(settings.service_url, settings.dask_gateway_proxy_address))
    return env


#: dask-gateway's own default scheduler-proxy port, used when no proxy address is configured.
DEFAULT_GATEWAY_PROXY_PORT = 8786


def dask_gateway_env(service_url: str, proxy_address: str = "") -> dict[str, str]:
    """Dask config with which ``dask_gateway.Gateway()``, given no arguments, uses this facility."""
    base = service_url.rstrip("/")
    host_port = proxy_address.removeprefix("gateway://") or f"{urlsplit(base).hostname}:{DEFAULT_GATEWAY_PROXY_PORT}"
    return {
        "DASK_GATEWAY__ADDRESS": base + "/gateway",
        "DASK_GATEWAY__PUBLIC_ADDRESS": base,
        "DASK_GATEWAY__PROXY_ADDRESS": f"gateway://{host_port}",
        "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
    }


def token_path(token_dir: str, name: str) -> str:
    return os.path.join(token_dir, token_filename(name))


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
