"""A GenericOAuthenticator whose endpoints come from OIDC discovery and whose JWTs are verified.

The provider plumbing under :class:`~authenticators.iam.IAMAuthenticator`: discovery with retries,
the JWKS-backed verifier, and requests to the token endpoint through oauthenticator's own HTTP
machinery (``httpfetch``), so ``http_request_kwargs`` (CA files), ``validate_server_cert`` and
``basic_auth`` apply to every call.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode

from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthLoginHandler
from tornado import web
from tornado.httpclient import HTTPClientError
from traitlets import Bool, Float, Integer, Unicode, default

from . import metrics
from .discovery import DiscoveryFailed, ProviderEndpoints, discovery_url, parse_discovery
from .jwks import JWKSCache, TokenRejected, TokenVerifier
from .logout import IAMCallbackHandler, IAMLogoutHandler, end_session_url, login_url_beside
from .refresh import RetryableError, SingleFlight, with_backoff


class IAMRefused(Exception):
    """IAM answered a request with a refusal; ``reason`` is the OAuth error code or HTTP status (never a token)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"IAM refused the request: {reason}")


class JWKSUnavailable(Exception):
    """IAM's JWKS could not be fetched, so no token can be verified right now."""


class IAMLoginHandler(OAuthLoginHandler):
    """Makes sure IAM's endpoints are known before redirecting; a clear 503 page if IAM is down."""

    async def get(self):
        try:
            await self.authenticator.ensure_discovered()
        except DiscoveryFailed as e:
            raise web.HTTPError(503, "Login is temporarily unavailable: %s", e) from None
        return super().get()



class DiscoveredOAuthenticator(GenericOAuthenticator):
    """Endpoints from ``<issuer>/.well-known/openid-configuration``; tokens verified against its JWKS."""

    login_handler = IAMLoginHandler
    callback_handler = IAMCallbackHandler
    logout_handler = IAMLogoutHandler

    issuer = Unicode(
        config=True,
        help="""IAM issuer URL, e.g. ``https://cms-auth.cern.ch/``. Endpoints are discovered from
        ``<issuer>/.well-known/openid-configuration``; tokens must carry exactly this ``iss``.""",
    )
    discovery_attempts = Integer(
        5, config=True, help="Attempts to fetch the discovery document at hub start (backoff between)."
    )
    retry_attempts = Integer(
        3, config=True, help="Attempts per refresh or exchange request when IAM is unreachable or answers 5xx."
    )
    retry_backoff = Float(
        0.5, config=True, help="First delay (seconds) between retries; doubles each retry (jittered)."
    )
    jwt_leeway = Float(30.0, config=True, help="Clock skew (seconds) tolerated on exp/nbf/iat.")
    jwks_refetch_interval = Float(
        10.0,
        config=True,
        help="""Minimum seconds between JWKS refetches caused by an unknown ``kid`` (key rotation).
        Bounds the load forged tokens can put on IAM.""",
    )

    end_iam_session_on_logout = Bool(
        True,
        config=True,
        help="""Hub logout also signs the user out of IAM (OpenID Connect RP-initiated logout at the
        ``end_session_endpoint`` IAM's discovery document announces), so the next login asks which
        account to use. Off: only the hub's session ends, and the next login is silently the same
        IAM account. Ignored when ``logout_redirect_url`` is set. The refusal (403) page always offers
        the sign-out, so a user who picked the wrong account can switch.""",
    )
    post_logout_redirect_url = Unicode(
        config=True,
        help="""Where IAM sends the browser after signing out (``post_logout_redirect_uri``); IAM
        honours only URLs registered for the hub's client, so register this one. Default: the hub's
        login page beside ``oauth_callback_url`` (``https://hub.example/hub/login``).""",
    )

    @default("basic_auth")
    def _basic_auth_default(self):
        return True  # IAM clients default to client_secret_basic

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._endpoints: ProviderEndpoints | None = None
        self._verifier: TokenVerifier | None = None
        self._discovery = SingleFlight()
        self._startup_task: asyncio.Future | None = None

    # --- discovery -----------------------------------------------------------------------------

    def get_handlers(self, app):
        """Also start discovery now (hub start), so the first login does not wait for it."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            self._startup_task = asyncio.ensure_future(self._discover_at_start())
        return super().get_handlers(app)

    async def _discover_at_start(self) -> None:
        try:
            await self.ensure_discovered(self.discovery_attempts)
        except DiscoveryFailed as e:
            self.log.error("IAM discovery failed at start (will retry at first login): %s", e)

    async def ensure_discovered(self, attempts: int = 1) -> ProviderEndpoints:
        """IAM's endpoints, fetching the discovery document once (concurrent callers share it)."""
        if self._endpoints is None:
            await self._discovery.run("discovery", lambda: self._discover(attempts))
        return self._endpoints

    async def _discover(self, attempts: int) -> None:
        if not self.issuer:
            raise DiscoveryFailed("IAMAuthenticator.issuer is not configured")
        url = discovery_url(self.issuer)

        async def fetch_once():
            return await self._get_json(url, "fetching IAM discovery document")

        try:
            document = await with_backoff(fetch_once, attempts, self.retry_backoff)
            endpoints = parse_discovery(document, self.issuer)
        except RetryableError as e:
            metrics.FAILURES.labels("discovery", e.reason).inc()
            raise DiscoveryFailed(f"IAM at {self.issuer} is unreachable ({e.reason})") from None
        except IAMRefused as e:
            metrics.FAILURES.labels("discovery", e.reason).inc()
            raise DiscoveryFailed(f"IAM at {self.issuer} has no discovery document ({e.reason})") from None
        except DiscoveryFailed:
            metrics.FAILURES.labels("discovery", "invalid document").inc()
            raise
        if self.token_exchanges and not endpoints.supports_token_exchange:
            self.log.warning("IAM at %s does not announce the token-exchange grant", self.issuer)
        self.authorize_url = endpoints.authorization_endpoint
        self.token_url = endpoints.token_endpoint
        self.userdata_url = endpoints.userinfo_endpoint
        jwks = JWKSCache(
            fetch=lambda: self._get_json(endpoints.jwks_uri, "fetching IAM JWKS"),
            min_refetch_interval=self.jwks_refetch_interval,
        )
        self._verifier = TokenVerifier(issuer=endpoints.issuer, jwks=jwks, leeway=self.jwt_leeway)
        self._endpoints = endpoints
        self.log.info("IAM endpoints discovered from %s", url)

    def iam_sign_out_url(self, handler: web.RequestHandler) -> str | None:
        """IAM's sign-out URL returning to the hub, or None if IAM announces no ``end_session_endpoint``."""
        if self._endpoints is None or not self._endpoints.end_session_endpoint:
            return None
        back = self.post_logout_redirect_url or login_url_beside(self.get_callback_url(handler))
        return end_session_url(self._endpoints.end_session_endpoint, self.client_id, back)

    async def _fetch(self, url: str, label: str, **kwargs: Any):
        """One request through oauthenticator's ``httpfetch``; network errors and 5xx are retryable."""
        try:
            resp = await self.httpfetch(
                url, label, parse_json=False, raise_error=False, validate_cert=self.validate_server_cert, **kwargs
            )
        except HTTPClientError as e:
            raise RetryableError(f"http {e.code}") from None
        except OSError as e:
            raise RetryableError(type(e).__name__) from None
        if resp.code >= 500:
            raise RetryableError(f"http {resp.code}")
        return resp

    async def _get_json(self, url: str, label: str) -> Any:
        resp = await self._fetch(url, label, method="GET")
        if resp.code != 200:
            raise IAMRefused(f"http {resp.code}")
        return json.loads(resp.body or b"null")

    # --- token endpoint ------------------------------------------------------------------------

    async def get_token_info(self, handler, params):
        """The authorization-code grant at login (oauthenticator's request, counted)."""
        await self.ensure_discovered()
        metrics.IDP_CALLS.labels(params.get("grant_type", "unknown")).inc()
        return await super().get_token_info(handler, params)

    async def token_request(self, params: dict[str, str], grant: str) -> dict:
        """POST ``params`` to IAM's token endpoint through oauthenticator's HTTP machinery.

        RetryableError for network errors and 5xx; IAMRefused (OAuth ``error``) for refusals.
        """
        try:
            await self.ensure_discovered()
        except DiscoveryFailed:
            raise RetryableError("discovery failed") from None
        metrics.IDP_CALLS.labels(grant).inc()
        resp = await self._fetch(
            self.token_url, f"requesting {grant}", method="POST",
            headers=self.build_token_info_request_headers(), body=urlencode(params).encode(),
        )
        try:
            body = json.loads(resp.body or b"{}")
        except ValueError:
            body = {}
        if resp.code != 200 or not isinstance(body, dict) or "error" in body:
            error = body.get("error") if isinstance(body, dict) else None
            raise IAMRefused(str(error or f"http {resp.code}"))
        if not body.get("access_token"):
            raise IAMRefused("no access_token in response")
        return body

    # --- verification and identity ---------------------------------------------------------------

    async def verify_token(self, token: str, kind: str, audiences: list[str] | None) -> dict:
        """Verified claims; TokenRejected is logged (reason only) and counted."""
        await self.ensure_discovered()
        required = ("exp", "iat", "iss", "sub") if kind == "id" else ("exp", "iat", "iss")
        try:
            return await self._verifier.verify(token, audiences, required)
        except (RetryableError, IAMRefused) as e:
            metrics.FAILURES.labels("jwks", e.reason).inc()
            raise JWKSUnavailable(f"IAM's signing keys could not be fetched ({e.reason})") from None
        except TokenRejected as e:
            metrics.FAILURES.labels("verify", e.reason).inc()
            self.log.warning("Rejected %s token from IAM: %s", kind, e.reason)
            raise
