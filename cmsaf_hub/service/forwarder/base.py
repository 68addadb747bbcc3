"""The handler base shared by the dashboard and scheduler relays: who is asking, may they, how to say
no, and how a permitted websocket upgrade is relayed.

Every request is decided by :func:`~cmsaf_hub.service.forwarder.target.decide` *before* any upstream
connection is opened, and the client's connection is only upgraded once the upstream has accepted
the same upgrade, so a client never holds an open socket to a cluster it may not use.
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from jupyterhub.services.auth import HubOAuthenticated, UserNotAllowed
from tornado import web
from tornado.iostream import StreamClosedError

from .splice import Upstream, UpstreamRefused, handshake_request, open_upstream, splice
from .target import Authorizer, Decision, Resolver, Target, credential_matches, decide

if TYPE_CHECKING:
    from . import Forwarder

_MESSAGES = {
    Decision.UNAUTHENTICATED: "Authentication required: log in to the hub or send 'Authorization: token <hub token>'.",
    Decision.FORBIDDEN: "You may not use this cluster.",
    Decision.GONE: "This cluster has stopped.",
    Decision.NOT_READY: "This cluster's scheduler is not up yet; retry shortly.",
}


class ForwarderHandler(HubOAuthenticated, web.RequestHandler):
    """Authenticates through the hub, resolves the cluster, applies the access rules, relays."""

    def initialize(self, forwarder: Forwarder, resolve: Resolver, authorize: Authorizer, hub_auth: Any) -> None:
        self.forwarder = forwarder
        self.resolve = resolve
        self.authorize = authorize
        self.hub_auth = hub_auth
        self.log = forwarder.log
        self.target: Target | None = None

    # --- who is asking --------------------------------------------------------------------------

    def presented_token(self) -> str | None:
        """The token of an ``Authorization: token|bearer <value>`` header, if any."""
        scheme, _, value = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() in ("token", "bearer") and value.strip():
            return value.strip()
        return None

    async def hub_user(self) -> tuple[dict[str, Any] | None, bool]:
        """``(user model or None, whether its token grants access to this service)``.

        Token first, then the OAuth cookie; asks the hub without blocking the event loop.
        """
        model = await self.hub_auth.get_user(self, sync=False)
        if not model:
            return None, False
        try:
            return self.check_hub_user(model), True
        except UserNotAllowed:
            return model, False

    def is_websocket_request(self) -> bool:
        return self.request.headers.get("Upgrade", "").lower() == "websocket"

    def wants_html(self) -> bool:
        return "text/html" in self.request.headers.get("Accept", "") and not self.is_websocket_request()

    def cross_origin(self) -> bool:
        """A browser websocket from another site riding on the hub cookie (token requests are exempt)."""
        origin = self.request.headers.get("Origin")
        if not origin or self.presented_token():
            return False
        return urlsplit(origin).netloc.lower() != self.request.host.lower()

    # --- deciding -------------------------------------------------------------------------------

    async def admit(self, cluster_id: str, *, accept_worker_credential: bool) -> Target:
        """Return the cluster if this request may use it; otherwise finish with the right error."""
        self.target = target = await self.resolve(cluster_id)
        worker_ok = accept_worker_credential and credential_matches(target, self.presented_token())
        user, service_access = (None, False) if worker_ok else await self.hub_user()
        if user is not None and not service_access:
            decision = Decision.FORBIDDEN  # identified, but the token may not use this service
        else:
            decision = decide(target, user, self.authorize, worker_credential_ok=worker_ok)
        if decision is Decision.ALLOW and self.is_websocket_request() and self.cross_origin():
            decision = Decision.FORBIDDEN
        if decision is Decision.ALLOW:
            assert target is not None
            return target
        if decision is Decision.UNAUTHENTICATED and self.wants_html() and self.request.method == "GET":
            self.redirect(self.get_login_url())
            raise web.Finish()
        who = "worker credential" if worker_ok else (user or {}).get("name")
        self.log.info("forwarder: %s %s for %s -> %d", self.request.method, self.request.path, who, decision.value)
        raise web.HTTPError(decision.value)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors as ``{"error": ...}`` JSON, or a small HTML page for browsers; 503 adds Retry-After."""
        decision = Decision._value2member_map_.get(status_code)
        message = _MESSAGES.get(decision, self._reason)  # type: ignore[arg-type]
        if status_code == 503:
            self.set_header("Retry-After", str(self.forwarder.retry_after))
        if self.wants_html():
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(f"<!doctype html><title>{status_code}</title><h1>{status_code}</h1><p>{html.escape(message)}</p>")
        else:
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"error": message}))

    def check_xsrf_cookie(self) -> None:
        """Only GET/HEAD and websocket upgrades reach these handlers: nothing to protect."""

    # --- relaying websockets --------------------------------------------------------------------

    async def relay_websocket(self, url: str) -> None:
        """Upgrade upstream first (503 if refused), then hand the client the upstream's 101 and splice."""
        assert self.target is not None
        upstream = Upstream(url, self.target.upstream_ssl)
        request_head = handshake_request(upstream, self.request.method or "GET", self.request.headers)
        try:
            stream, response_head = await open_upstream(upstream, request_head, self.forwarder.connect_timeout)
        except UpstreamRefused as e:
            self.log.warning("forwarder: cluster %s refused the relay: %s", self.target.cluster_id, e)
            raise web.HTTPError(503) from None
        client = self.detach()
        try:
            await client.write(response_head)
        except StreamClosedError:
            stream.close()
            return
        await splice(client, stream, self.forwarder.chunk_size)
