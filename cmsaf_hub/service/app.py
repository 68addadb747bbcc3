"""The cluster service: a traitlets application serving the REST API, run by the hub as a service.

It wires the store, the reconciler, the backend and the hub's OAuth together and builds its
tornado handler list in :meth:`CmsafService.web_handlers` (subclasses add more).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
import time
from typing import Any
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuth
from tornado import web
from tornado.httpserver import HTTPServer
from traitlets import Bool, Dict, Float, Integer, Type, Unicode, default
from traitlets.config import Application, catch_config_error

from .api import clusters as cluster_api
from .api import misc
from .api.base import APIError
from .backends.base import Backend
from .broker import Broker, broker_handlers
from .backends.local import LocalBackend
from .cluster_tokens import ClusterTokenKeeper
from ..comm import CREDENTIAL_ENV
from .crypto import CRYPT_KEY_ENV, SecretBox, parse_crypt_keys, read_crypt_keys
from .gateway import DaskGateway, SNIPassthrough, gateway_api_handlers
from .forwarder import ClusterState, Target, fast_address, forwarder_handlers, hash_credential
from .hubapi import HubAPI, HubAPIError
from .metrics import ServiceMetrics
from .models import ClusterRecord, ClusterStatus, cluster_model
from .options import ClusterOptions
from .probe import client_security
from .quotas import Limits
from .reconciler import Reconciler
from .store import Store
from .ui import ui_handlers

_FORWARDER_STATES = {
    ClusterStatus.PENDING: ClusterState.STARTING,
    ClusterStatus.STARTING: ClusterState.STARTING,
    ClusterStatus.RUNNING: ClusterState.RUNNING,
}


class CmsafService(Application):
    """Owns every user's Dask clusters (docs/cluster-service.md)."""

    name = "cmsaf-service"
    description = __doc__
    classes = [Reconciler, Limits, ClusterOptions, LocalBackend, DaskGateway, Broker]
    aliases = {
        "config": "CmsafService.config_file",
        "db-url": "CmsafService.db_url",
        "log-level": "Application.log_level",
    }

    @default("log_level")
    def _default_log_level(self) -> int:
        return logging.INFO

    @default("log_format")
    def _default_log_format(self) -> str:
        return "[%(levelname)1.1s %(asctime)s.%(msecs).03d %(name)s] %(message)s"

    @default("log_datefmt")
    def _default_log_datefmt(self) -> str:
        return "%Y-%m-%d %H:%M:%S"

    config_file = Unicode(
        "", help="Python config file to load (traitlets), e.g. cmsaf_service_config.py."
    ).tag(config=True)

    service_prefix = Unicode(help="URL prefix of the service (from JUPYTERHUB_SERVICE_PREFIX).").tag(config=True)

    @default("service_prefix")
    def _default_prefix(self) -> str:
        return "/" + os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/cmsaf/").strip("/") + "/"

    bind_url = Unicode(help="Where to listen (from JUPYTERHUB_SERVICE_URL).").tag(config=True)

    @default("bind_url")
    def _default_bind_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")

    public_url = Unicode(
        help="""The hub's public URL as users' browsers and clients see it, e.g. https://hub.example/.
        Cluster dashboard links and scheduler addresses are built from it (from CMSAF_PUBLIC_URL or
        JUPYTERHUB_PUBLIC_URL; empty gives host-relative links)."""
    ).tag(config=True)

    @default("public_url")
    def _default_public_url(self) -> str:
        return os.environ.get("CMSAF_PUBLIC_URL") or os.environ.get("JUPYTERHUB_PUBLIC_URL", "")

    db_url = Unicode(
        "sqlite:///cmsaf-service.sqlite",
        help="SQLAlchemy URL of the service database (SQLite file or postgresql+psycopg://...).",
    ).tag(config=True)

    crypt_keys = Unicode(
        help=f"""Fernet key(s), ';'-separated (the first encrypts), for per-cluster secrets at rest.
        Default: the 0600 file named by ${CRYPT_KEY_ENV}_FILE (how the hub hands it over: a
        service's environment is stored in the hub's database), else ${CRYPT_KEY_ENV}."""
    ).tag(config=True)

    @default("crypt_keys")
    def _default_crypt_keys(self) -> str:
        return read_crypt_keys(os.environ)

    backend_class = Type(
        LocalBackend, klass=Backend, help="The backend class (import string allowed)."
    ).tag(config=True)

    backend_tokens = Bool(
        True,
        help="""Give clusters their owner's exchanged tokens: to the backend at start (HTCondor submits
        as the user; workers get token files) and pushed into running clusters before they expire
        (ClusterTokenKeeper). Off: clusters hold no user token.""",
    ).tag(config=True)

    cluster_env = Dict(
        {}, help="Environment variables for every cluster's scheduler and workers."
    ).tag(config=True)

    issuer = Unicode(
        help="The IAM issuer URL reported by GET /tokens (env CMSAF_ISSUER; else from auth_state)."
    ).tag(config=True)

    @default("issuer")
    def _default_issuer(self) -> str:
        return os.environ.get("CMSAF_ISSUER", "")

    max_request_body = Integer(64 * 1024, help="Largest accepted request body, bytes.").tag(config=True)
    long_poll_max = Float(60, help="Longest a GET /clusters/{id}?wait= may be held, seconds.").tag(config=True)
    owner_check_interval = Float(
        60, help="Seconds between checks that cluster owners still exist in the hub (clusters of removed users stop)."
    ).tag(config=True)
    user_cache_seconds = Float(30, help="How long the hub's answer about a user (admin, groups) is reused.").tag(
        config=True
    )

    @catch_config_error
    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
        try:
            self.secrets = SecretBox(parse_crypt_keys(self.crypt_keys))
        except ValueError as e:
            # never echo the configured value: it is a key
            self.exit_on_error(f"cmsaf-service: unusable encryption key configuration: {e}")
        self.limits = Limits(parent=self)
        self.cluster_options = ClusterOptions(parent=self)
        self.cluster_options.for_groups([])  # fail now on a bad option schema
        self.metrics = ServiceMetrics()
        self.store = Store(self.db_url, log=self.log)
        self.backend = self.backend_class(parent=self)
        self.hub_auth = HubOAuth(parent=self, cache_max_age=60)
        self.hub = HubAPI(self.hub_auth.api_url, self.hub_auth.api_token, user_cache_seconds=self.user_cache_seconds)
        self.reconciler = Reconciler(
            parent=self,
            backend=self.backend,
            store=self.store,
            secrets=self.secrets,
            tokens_provider=self.owner_tokens if self.backend_tokens else None,
            token_keeper=ClusterTokenKeeper(parent=self, tokens_provider=self.owner_tokens) if self.backend_tokens else None,
        )
        # the credential lets schedulers and facility workers reach brokered (hubrev://) workers;
        # HTCondor keeps it out of job ads (names saying CREDENTIAL never enter a job's environment)
        self.reconciler.env_hook = lambda record: {**self.cluster_env, CREDENTIAL_ENV: self.worker_credential(record.id)}
        self.broker = Broker(parent=self)
        if self.broker.listen and not self.broker.public_url:
            self.exit_on_error("cmsaf-service: Broker.listen is set but Broker.public_url is not: "
                               "workers must be told where to reach the broker's listener")
        self.broker_server: HTTPServer | None = None
        self.reconciler.dashboard_prefix_hook = self.dashboard_prefix
        self.gateway = DaskGateway(parent=self)
        self.gateway_proxy: SNIPassthrough | None = None
        self._ssl_contexts: dict[str, tuple[ssl.SSLContext, tuple[str, str]]] = {}
        self._model_json: dict[str, str] = {}
        self.store.listeners.append(lambda cluster_id: self._model_json.pop(cluster_id, None))
        self._started = time.time()
        self._tasks: list[asyncio.Task] = []

    # -- pieces handlers use ---------------------------------------------------------------------

    @property
    def public_base(self) -> str:
        return self.public_url.rstrip("/") + self.service_prefix

    def dashboard_prefix(self, cluster_id: str) -> str:
        return f"{self.service_prefix}clusters/{cluster_id}/dashboard"

    def cluster_model(self, record: ClusterRecord) -> dict[str, Any]:
        model = cluster_model(record, public_base=self.public_base)
        # the fast path (Dask's TLS comm through the hub, docs/proxy.md) beside the ws relay
        model["fast_scheduler_address"] = fast_address(self.public_base, record.id) if model["scheduler_address"] else None
        return model

    def cluster_json(self, record: ClusterRecord) -> str:
        """The cluster model serialized, cached until the record changes (list requests stay cheap)."""
        text = self._model_json.get(record.id)
        if text is None:
            text = self._model_json[record.id] = json.dumps(self.cluster_model(record), separators=(",", ":"))
        return text

    async def hub_user_info(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.hub.user(name)
        except HubAPIError as e:
            self.log.error("%s", e)
            raise APIError(502, "the hub did not answer; try again shortly")

    async def owner_tokens(self, owner: str) -> dict[str, str]:
        auth_state = await self.hub.auth_state(owner) or {}
        return {
            name: entry["access_token"]
            for name, entry in (auth_state.get("exchanged_tokens") or {}).items()
            if isinstance(entry, dict) and entry.get("access_token")
        }

    def health(self) -> dict[str, Any]:
        active = sum(1 for c in self.store.clusters.values() if c.status.active)
        return {
            "status": "ok",
            "backend": type(self.backend).__name__,
            "clusters_active": active,
            "uptime_seconds": round(time.time() - self._started, 1),
        }

    def worker_credential(self, cluster_id: str) -> str:
        """The secret with which outbound-only workers join a cluster through the hub (owner only)."""
        return self.secrets.derive(f"worker-credential:{cluster_id}")

    async def forwarder_target(self, cluster_id: str) -> Target | None:
        """The forwarder's view of a cluster (see cmsaf_hub.service.forwarder)."""
        record = self.store.get(cluster_id)
        if record is None:
            return None
        upstream_ssl, tls_pem = None, None
        if record.status is ClusterStatus.RUNNING:
            cached = self._ssl_contexts.get(record.id)
            if cached is None:
                tls_key = self.secrets.decrypt(record.tls_key_encrypted)
                security = client_security(record.tls_cert, tls_key)
                cached = security.get_connection_args("client")["ssl_context"], (record.tls_cert, tls_key)
                self._ssl_contexts[record.id] = cached
            upstream_ssl, tls_pem = cached
        else:
            self._ssl_contexts.pop(record.id, None)
        return Target(
            cluster_id=record.id,
            owner=record.owner,
            state=_FORWARDER_STATES.get(record.status, ClusterState.STOPPED),
            scheduler_ws_address=record.backend_state.get("ws_address"),
            dashboard_address=record.dashboard_address,
            worker_credential_sha256=hash_credential(self.worker_credential(record.id)),
            upstream_ssl=upstream_ssl,
            scheduler_tls_address=record.scheduler_address,
            tls_pem=tls_pem,
        )

    async def gateway_scheduler_address(self, cluster_id: str) -> str | None:
        """Where dask-gateway's scheduler proxy splices a cluster's connections (running clusters only)."""
        record = self.store.get(cluster_id)
        return record.scheduler_address if record is not None and record.status is ClusterStatus.RUNNING else None

    # -- web ---------------------------------------------------------------------------------------

    def web_handlers(self) -> list[tuple]:
        """The tornado URL specs; override or extend to mount more handlers."""
        api = self.service_prefix + "api/v1/"
        kw = {"service": self}
        cid = r"([0-9a-zA-Z_-]{1,64})"
        return [
            *ui_handlers(self.service_prefix, self),  # web pages and their OAuth callback (cmsaf_hub.service.ui)
            (api + "options", misc.OptionsHandler, kw),
            (api + "clusters", cluster_api.ClustersHandler, kw),
            (api + f"clusters/{cid}", cluster_api.ClusterHandler, kw),
            (api + f"clusters/{cid}/scale", cluster_api.ScaleHandler, kw),
            (api + f"clusters/{cid}/adapt", cluster_api.AdaptHandler, kw),
            (api + f"clusters/{cid}/logs", cluster_api.LogsHandler, kw),
            (api + f"clusters/{cid}/worker-credential", cluster_api.WorkerCredentialHandler, kw),
            (api + "tokens", misc.TokensHandler, kw),
            (api + "health", misc.HealthHandler, kw),
            (api + "metrics", misc.MetricsHandler, kw),
            (api + "openapi.json", misc.OpenAPIHandler, kw),
            *forwarder_handlers(self.service_prefix, self.forwarder_target, self.hub_auth, parent=self),
            *broker_handlers(self.service_prefix, self.forwarder_target, self.hub_auth, broker=self.broker),
            *(gateway_api_handlers(self.service_prefix, self, self.gateway) if self.gateway.enabled else []),
            (api + ".*", misc.NotFoundHandler, kw),
        ]

    def _application(self, handlers: list[Any]) -> web.Application:
        return web.Application(handlers, cookie_secret=os.urandom(32), hub_auth=self.hub_auth,
                               log_function=self._log_request)

    def make_web_app(self) -> web.Application:
        return self._application(self.web_handlers())

    def make_broker_app(self) -> web.Application:
        """What ``Broker.listen`` serves: the broker's URLs, and 404 for everything else."""
        return self._application(
            broker_handlers(self.service_prefix, self.forwarder_target, self.hub_auth, broker=self.broker))

    def _log_request(self, handler: web.RequestHandler) -> None:
        status = handler.get_status()
        level = self.log.info if status < 400 else self.log.warning
        if status < 400 and handler.request.method == "GET":
            level = self.log.debug
        # request.path, not uri: query strings may carry tokens
        level("%d %s %s %.1fms", status, handler.request.method, handler.request.path,
              1000 * handler.request.request_time())  # fmt: skip

    # -- lifecycle ---------------------------------------------------------------------------------

    async def owner_check_once(self) -> None:
        owners = {c.owner for c in self.store.clusters.values() if c.status.active}
        for owner in sorted(owners):
            try:
                exists = await self.hub.user(owner, fresh=True) is not None
            except HubAPIError as e:
                self.log.warning("Owner check skipped: %s", e)
                return
            if not exists:
                for record in self.store.active_owned_by(owner):
                    await self.reconciler.request_stop(record, f"owner {owner} was removed from the hub")

    async def _owner_loop(self) -> None:
        while True:
            await asyncio.sleep(self.owner_check_interval)
            try:
                await self.owner_check_once()
            except Exception:
                self.log.exception("Owner check failed")

    async def start_service(self) -> None:
        await self.store.open()
        await self.backend.start()
        await self.reconciler.start()
        url = urlparse(self.bind_url)
        self.http_server = HTTPServer(self.make_web_app(), xheaders=True, max_body_size=4 * self.max_request_body)
        self.http_server.listen(url.port or 80, url.hostname or "127.0.0.1")
        if self.broker.listen:
            self.broker_server = HTTPServer(self.make_broker_app(), xheaders=True, max_body_size=self.max_request_body)
            self.broker_server.listen(*port_and_host(self.broker.listen))
            self.log.info("broker listener on %s, published as %s", self.broker.listen, self.broker.public_url)
        if self.gateway.enabled and self.gateway.proxy_listen:
            self.gateway_proxy = SNIPassthrough(self.gateway_scheduler_address, log=self.log,
                                                handshake_timeout=self.gateway.handshake_timeout)
            self.gateway_proxy.listen(*port_and_host(self.gateway.proxy_listen))
            self.log.info("dask-gateway scheduler proxy (TLS passthrough by SNI) on %s", self.gateway.proxy_listen)
        self._tasks.append(asyncio.create_task(self._owner_loop(), name="owner-check"))
        self.log.info(
            "cmsaf service on %s%s (backend %s, %d clusters known)",
            self.bind_url.rstrip("/"), self.service_prefix, type(self.backend).__name__, len(self.store.clusters),
        )  # fmt: skip

    async def stop_service(self) -> None:
        """Stop serving; clusters keep running (they are re-adopted on the next start)."""
        self.http_server.stop()
        if self.broker_server is not None:
            self.broker_server.stop()
        if self.gateway_proxy is not None:
            self.gateway_proxy.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.reconciler.stop()
        await self.backend.close()
        await self.store.close()
        self.log.info("cmsaf service stopped")

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start_service()
        await stop.wait()
        await self.stop_service()

    def start(self) -> None:
        asyncio.run(self.run())


    def exit_on_error(self, message: str) -> None:
        self.log.critical("%s", message)
        raise SystemExit(1)


def port_and_host(listen: str) -> tuple[int, str]:
    """``host:port`` (``[v6]:port``; an empty host: every interface) -> the ``(port, address)`` servers listen on."""
    host, _, port = listen.rpartition(":")
    return int(port), host.strip("[]")


def main(argv: list[str] | None = None) -> None:
    app = CmsafService.instance()
    app.initialize(argv)
    app.start()
