"""The connection broker: peers reach workers that accept no inbound connection (``cmsaf_hub.reverse``).

A worker on an outbound-only site keeps a control channel open (``<cluster>/broker/<worker id>``,
a websocket authenticated with the cluster's worker credential). A peer connecting to the worker's
``hubrev://`` address arrives at ``<cluster>/workers/<worker id>``; once it is admitted (the same rules
as the scheduler relay: the owner's or an admin's hub token, or the cluster's worker credential),
the broker sends the worker a ticket over its control channel, the worker opens
``<cluster>/broker/<worker id>/<ticket>`` outward, and the two connections are answered ``101``
and spliced in the kernel (``splice_in_kernel``: ``splice(2)`` through one pipe per direction).

By default both connections reach the service through the hub's proxy, which then relays every
brokered byte twice. ``Broker.listen`` gives the broker a listener of its own, serving these URLs
and nothing else; with the hub's ingress routing the broker's paths to it (:func:`ingress_path`),
or on a host name of its own, and published as ``Broker.public_url``, it takes the proxy out of
brokered connections (workers are told to use it by ``CMSAF_BROKER_URL``).

Refusals (JSON ``{"error": ...}``): 400 not an upgrade, 401 no credential, 403 wrong credential or
foreign/unknown cluster (same body), 404 cluster stopped or unknown ticket, 503 worker not
connected to the broker (``Retry-After``), 504 the worker did not answer within
``Broker.answer_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any
from urllib.parse import urlsplit

from tornado import web
from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler, WebSocketProtocol13
from traitlets import Float, Integer, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from .forwarder import ClusterState, Forwarder, Target, credential_matches, owner_or_admin
from .forwarder.base import ForwarderHandler
from .forwarder.splice import splice_in_kernel
from .forwarder.target import Authorizer, Resolver

#: (cluster id, worker id)
ChannelKey = tuple[str, str]


def ingress_path(prefix: str) -> str:
    """The path regex an ingress on the hub's public host routes to ``Broker.listen``.

    It matches the broker's URLs under the service ``prefix`` (control channels and answers,
    ``<cluster>/broker/...``, and peers' connects, ``<cluster>/workers/...``) and none of the
    service's others, so outbound-only workers use the hub's one public address while their bytes
    skip the hub's proxy. ``deploy/manifests/broker-ingress.yaml`` carries it.
    """
    return "/" + prefix.strip("/") + "/clusters/[^/]+/(broker|workers)/"


def switching_protocols(websocket_key: str) -> bytes:
    """The ``101`` answer to a websocket upgrade (what the hub's proxy expects to pass through)."""
    accept = WebSocketProtocol13.compute_accept_value(websocket_key)
    return (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode("latin-1")


def presented_token(headers: Any) -> str | None:
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() in ("token", "bearer") and value.strip() else None


class Broker(LoggingConfigurable):
    """Which outbound-only workers are connected, and the connects waiting for their answer."""

    answer_timeout = Float(
        10.0, config=True,
        help="""Seconds a brokered connect waits for the worker to open its answering connection
        (then 504). Dask's connect retries within its own timeout.""",
    )
    ping_interval = Float(
        10.0, config=True,
        help="Seconds between websocket pings on a worker's control channel (dead channels are dropped).",
    )
    ping_timeout = Float(
        30.0, config=True, help="Seconds without a pong after which a control channel is closed."
    )
    max_pending = Integer(
        256, config=True,
        help="Most brokered connects that may wait for one worker's answer at once (more get 503).",
    )

    listen = Unicode(
        "", config=True,
        help="""``host:port`` of a listener of the broker's own, beside the service's port. It serves
        the broker's URLs only (control channels, workers' answers, peers' connects; every other
        path is 404), so it can be published where the service's API is not: the hub's ingress
        routes the broker's paths there (:func:`ingress_path`), or a host name of its own points at
        it. Workers at outbound-only sites then open their connections to it (``public_url``)
        without passing the hub's proxy, which otherwise relays every brokered byte twice. Empty:
        the broker is reached through the hub's proxy only.""",
    )
    public_url = Unicode(
        "", config=True,
        help="""The URL at which workers on outbound-only sites, and the peers that connect to them,
        reach ``listen``: the hub's public URL (``https://hub.example``) when its ingress routes the
        broker's paths there, or a host name of its own (``https://broker.hub.example:8443``) with
        TLS terminated in front of it (the listener itself speaks plain HTTP); ``http://`` only
        inside a trusted network. No path. The worker-credential API hands it to workers as
        ``CMSAF_BROKER_URL``. Required with ``listen``.""",
    )

    @validate("public_url")
    def _valid_public_url(self, proposal: dict[str, Any]) -> str:
        url = proposal["value"]
        if url:
            u = urlsplit(url)
            if u.scheme not in ("http", "https") or not u.hostname or u.path.strip("/") or u.query:
                raise TraitError(f"Broker.public_url must be http(s)://host[:port], got {url!r}")
        return url

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.channels: dict[ChannelKey, BrokerControlHandler] = {}
        self.pending: dict[str, tuple[ChannelKey, asyncio.Future[IOStream]]] = {}

    def register(self, key: ChannelKey, channel: BrokerControlHandler) -> None:
        previous = self.channels.get(key)
        self.channels[key] = channel
        if previous is not None and previous is not channel:
            previous.close(1000, "replaced by a newer control channel")
        self.log.info("broker: worker %s of cluster %s connected", key[1], key[0])

    def unregister(self, key: ChannelKey, channel: BrokerControlHandler) -> None:
        if self.channels.get(key) is channel:
            del self.channels[key]
            for ticket, (pending_key, future) in list(self.pending.items()):
                if pending_key == key and not future.done():
                    future.cancel()
            self.log.info("broker: worker %s of cluster %s disconnected", key[1], key[0])

    def workers_of(self, cluster_id: str) -> list[str]:
        return sorted(w for c, w in self.channels if c == cluster_id)

    async def request(self, key: ChannelKey) -> IOStream:
        """Ask the worker for a connection; its answering stream, or :class:`asyncio.TimeoutError`."""
        channel = self.channels.get(key)
        if channel is None or sum(1 for k, _ in self.pending.values() if k == key) >= self.max_pending:
            raise LookupError(key)
        ticket = secrets.token_urlsafe(24)
        future: asyncio.Future[IOStream] = asyncio.get_running_loop().create_future()
        self.pending[ticket] = (key, future)
        try:
            try:
                await channel.write_message(json.dumps({"op": "connect", "ticket": ticket}))
            except WebSocketClosedError:
                raise LookupError(key) from None
            return await asyncio.wait_for(future, self.answer_timeout)
        finally:
            self.pending.pop(ticket, None)

    def answer(self, key: ChannelKey, ticket: str) -> asyncio.Future[IOStream] | None:
        """The waiting connect ``ticket`` belongs to, if it is this worker's."""
        entry = self.pending.get(ticket)
        if entry is None or entry[0] != key or entry[1].done():
            return None
        return entry[1]

    def handlers(self, prefix: str, resolve: Resolver, hub_auth: Any, authorize: Authorizer = owner_or_admin,
                 ) -> list[tuple[str, type, dict[str, Any]]]:
        """URL specs for the control channel, the workers' answers and the peers' connects."""
        base = "/" + prefix.strip("/") + "/clusters/([^/]+)/"
        wid = "([0-9a-zA-Z_-]{1,64})"
        forwarder = Forwarder(parent=self)
        peer_kwargs = {"forwarder": forwarder, "resolve": resolve, "authorize": authorize, "hub_auth": hub_auth,
                       "broker": self}
        own_kwargs = {"broker": self, "resolve": resolve, "forwarder": forwarder}
        return [
            (base + f"broker/{wid}", BrokerControlHandler, own_kwargs),
            (base + f"broker/{wid}/([0-9a-zA-Z_-]{{1,64}})", BrokerAnswerHandler, own_kwargs),
            (base + f"workers/{wid}/?", BrokeredConnectHandler, peer_kwargs),
        ]


class _WorkerCredentialMixin:
    """Admits the cluster's own workers only (worker credential), with the forwarder's error bodies."""

    request: Any
    broker: Broker
    resolve: Resolver

    async def admit_worker(self, cluster_id: str) -> Target:
        target = await self.resolve(cluster_id)
        token = presented_token(self.request.headers)
        if token is None:
            raise web.HTTPError(401, reason="worker credential required")
        if not credential_matches(target, token):
            self.broker.log.info("broker: %s refused: not this cluster's worker credential", self.request.path)
            raise web.HTTPError(403)
        assert target is not None
        if target.state is not ClusterState.RUNNING:
            raise web.HTTPError(404 if target.state is ClusterState.STOPPED else 503)
        return target

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        messages = {401: "Send the cluster's worker credential as 'Authorization: token <credential>'.",
                    403: "You may not use this cluster.", 404: "This cluster has stopped.",
                    503: "This cluster's scheduler is not up yet; retry shortly."}
        self.set_header("Content-Type", "application/json")  # type: ignore[attr-defined]
        self.finish(json.dumps({"error": messages.get(status_code, self._reason)}))  # type: ignore[attr-defined]


class BrokerControlHandler(_WorkerCredentialMixin, WebSocketHandler):
    """``<cluster>/broker/<worker id>``: a worker's control channel (tickets flow service -> worker)."""

    def initialize(self, broker: Broker, resolve: Resolver, forwarder: Forwarder) -> None:
        self.broker = broker
        self.resolve = resolve
        self.key: ChannelKey | None = None

    async def get(self, cluster_id: str, worker_id: str) -> None:  # type: ignore[override]
        await self.admit_worker(cluster_id)
        self.key = (cluster_id, worker_id)
        await super().get(cluster_id, worker_id)

    @property
    def ping_interval(self) -> float:  # type: ignore[override]
        return self.broker.ping_interval

    @property
    def ping_timeout(self) -> float:  # type: ignore[override]
        return self.broker.ping_timeout

    def open(self, cluster_id: str, worker_id: str) -> None:  # type: ignore[override]
        assert self.key is not None
        self.broker.register(self.key, self)
        self.write_message(json.dumps({"op": "registered"}))

    def on_message(self, message: str | bytes) -> None:
        """Workers send nothing but pongs; anything else is ignored."""

    def on_close(self) -> None:
        if self.key is not None:
            self.broker.unregister(self.key, self)


class BrokerAnswerHandler(_WorkerCredentialMixin, web.RequestHandler):
    """``<cluster>/broker/<worker id>/<ticket>``: the connection a worker opened for one waiting peer."""

    def initialize(self, broker: Broker, resolve: Resolver, forwarder: Forwarder) -> None:
        self.broker = broker
        self.resolve = resolve

    async def get(self, cluster_id: str, worker_id: str, ticket: str) -> None:
        key_header = self.request.headers.get("Sec-WebSocket-Key")
        if self.request.headers.get("Upgrade", "").lower() != "websocket" or not key_header:
            raise web.HTTPError(400, reason="expected a websocket upgrade")
        await self.admit_worker(cluster_id)
        future = self.broker.answer((cluster_id, worker_id), ticket)
        if future is None:
            raise web.HTTPError(404, reason="no such brokered connection")
        stream = self.detach()
        try:
            await stream.write(switching_protocols(key_header))
        except StreamClosedError:
            return
        if future.done():  # the peer gave up meanwhile
            stream.close()
        else:
            future.set_result(stream)


class BrokeredConnectHandler(ForwarderHandler):
    """``<cluster>/workers/<worker id>``: a peer's connection to a brokered worker."""

    def initialize(self, broker: Broker, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(**kwargs)
        self.broker = broker
        self.detail: str | None = None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if self.detail is None:
            return super().write_error(status_code, **kwargs)
        if status_code == 503:
            self.set_header("Retry-After", "1")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": self.detail}))

    async def get(self, cluster_id: str, worker_id: str) -> None:
        key_header = self.request.headers.get("Sec-WebSocket-Key")
        if not self.is_websocket_request() or not key_header:
            raise web.HTTPError(400, reason="Connect with a Dask hubrev:// comm")
        await self.admit(cluster_id, accept_worker_credential=True)
        try:
            worker_stream = await self.broker.request((cluster_id, worker_id))
        except LookupError:
            self.detail = "This worker is not connected to the broker (now); retry shortly."
            raise web.HTTPError(503) from None
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self.detail = "The worker did not answer the brokered connection in time."
            raise web.HTTPError(504) from None
        worker_stream.set_nodelay(True)
        client = self.detach()
        try:
            await client.write(switching_protocols(key_header))
        except StreamClosedError:
            worker_stream.close()
            return
        await splice_in_kernel(client, worker_stream)


def broker_handlers(prefix: str, resolve: Resolver, hub_auth: Any, authorize: Authorizer = owner_or_admin,
                    *, broker: Broker) -> list[tuple[str, type, dict[str, Any]]]:
    """The URL specs the service adds for brokered workers (see :class:`Broker`)."""
    return broker.handlers(prefix, resolve, hub_auth, authorize)
