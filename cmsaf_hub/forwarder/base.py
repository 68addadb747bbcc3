"""The handler base shared by the dashboard and scheduler relays: who is asking, may they, and how to
say no; plus the bounded websocket pump both relays use.

Every request is decided by :func:`~cmsaf_hub.forwarder.target.decide` *before* any upstream
connection is opened, and the websocket upgrade is only accepted once the upstream leg is connected,
so a client never holds an open socket to a cluster it may not use.
"""

from __future__ import annotations

import asyncio
import html
import json
from typing import TYPE_CHECKING, Any

from jupyterhub.services.auth import HubOAuthenticated, UserNotAllowed
from tornado import web
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, WebSocketHandler, websocket_connect

from .target import Authorizer, Decision, Resolver, Target, credential_matches, decide

if TYPE_CHECKING:
    from . import Forwarder

_MESSAGES = {
    Decision.UNAUTHENTICATED: "Authentication required: log in to the hub or send 'Authorization: token <hub token>'.",
    Decision.FORBIDDEN: "You may not use this cluster.",
    Decision.GONE: "This cluster has stopped.",
    Decision.NOT_READY: "This cluster's scheduler is not up yet; retry shortly.",
}


class ForwarderHandler(HubOAuthenticated, WebSocketHandler):
    """Authenticates through the hub, resolves the cluster, applies the access rules, relays."""

    def initialize(self, forwarder: Forwarder, resolve: Resolver, authorize: Authorizer, hub_auth: Any) -> None:
        self.forwarder = forwarder
        self.resolve = resolve
        self.authorize = authorize
        self.hub_auth = hub_auth
        self.log = forwarder.log
        self.target: Target | None = None
        self.upstream: WebSocketClientConnection | None = None
        self._pump: asyncio.Task | None = None

    # --- who is asking --------------------------------------------------------------------------

    def presented_token(self) -> str | None:
        """The token of an ``Authorization: token|bearer <value>`` header, if any."""
        scheme, _, value = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() in ("token", "bearer") and value.strip():
            return value.strip()
        return None

    async def hub_user(self) -> dict[str, Any] | None:
        """The hub user (token first, then OAuth cookie), or None; asks the hub without blocking."""
        model = await self.hub_auth.get_user(self, sync=False)
        if not model:
            return None
        try:
            return self.check_hub_user(model)
        except UserNotAllowed:
            # Identified, but the token lacks access to this service: treat as "may not".
            return {"name": None, "kind": "unauthorized"}

    def wants_html(self) -> bool:
        return "text/html" in self.request.headers.get("Accept", "") and not self.is_websocket_request()

    def is_websocket_request(self) -> bool:
        return self.request.headers.get("Upgrade", "").lower() == "websocket"

    # --- deciding -------------------------------------------------------------------------------

    async def admit(self, cluster_id: str, *, accept_worker_credential: bool) -> Target:
        """Return the cluster if this request may use it; otherwise finish with the right error."""
        self.target = target = await self.resolve(cluster_id)
        worker_ok = False
        if accept_worker_credential:
            worker_ok = credential_matches(target, self.presented_token())
        user = None if worker_ok else await self.hub_user()
        if user is not None and user.get("kind") == "unauthorized":
            decision = Decision.FORBIDDEN
        else:
            decision = decide(target, user, self.authorize, worker_credential_ok=worker_ok)
        if decision is Decision.ALLOW:
            assert target is not None
            return target
        if decision is Decision.UNAUTHENTICATED and self.wants_html() and self.request.method == "GET":
            self.redirect(self.get_login_url())
            raise web.Finish()
        who = "worker credential" if worker_ok else (user or {}).get("name")
        self.log.info("forwarder: %s %s for %s -> %d", self.request.method, self.request.path, who, decision.value)
        raise web.HTTPError(decision.value, reason=None)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors as ``{"error": ...}`` JSON, or a small HTML page for browsers; 503 adds Retry-After."""
        message = _MESSAGES.get(Decision._value2member_map_.get(status_code), self._reason)  # type: ignore[arg-type]
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

    async def connect_upstream(self, url: str, subprotocols: list[str] | None = None) -> None:
        """Open the upstream websocket (Nagle off) or answer 503 if the cluster does not take it."""
        assert self.target is not None
        request = HTTPRequest(
            url,
            connect_timeout=self.forwarder.connect_timeout,
            request_timeout=self.forwarder.connect_timeout,
            ssl_options=self.target.upstream_ssl,
        )
        try:
            self.upstream = await websocket_connect(
                request, max_message_size=self.forwarder.max_message_size, subprotocols=subprotocols
            )
        except (OSError, StreamClosedError, HTTPClientError, asyncio.TimeoutError) as e:
            self.log.warning("forwarder: cluster %s unreachable at its %s listener: %s",
                             self.target.cluster_id, url.split("://")[0], type(e).__name__)
            raise web.HTTPError(503) from None
        self.upstream.stream.set_nodelay(True)

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.set_nodelay(True)
        self._pump = asyncio.ensure_future(self._pump_from_upstream())

    async def _pump_from_upstream(self) -> None:
        """Upstream -> client, one message in flight: the next read waits for the write to drain."""
        assert self.upstream is not None
        try:
            while True:
                message = await self.upstream.read_message()
                if message is None:
                    break
                await self.write_message(message, binary=isinstance(message, bytes))
        except (WebSocketClosedError, StreamClosedError):
            pass
        finally:
            self.close()

    async def on_message(self, message: str | bytes) -> None:
        """Client -> upstream; tornado reads the next client message only after this returns."""
        assert self.upstream is not None
        try:
            await self.upstream.write_message(message, binary=isinstance(message, bytes))
        except (WebSocketClosedError, StreamClosedError):
            self.close()

    def on_close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()

    @property
    def max_message_size(self) -> int:
        return self.forwarder.max_message_size
