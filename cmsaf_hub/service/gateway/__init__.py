"""dask-gateway compatibility: its REST API and its scheduler proxy, over this service's clusters.

A notebook written for a dask-gateway facility (``from dask_gateway import Gateway``) runs here
unchanged: the session's Dask config (set by the spawner) points ``Gateway()`` at
``<service>/gateway``, the API (:mod:`.api`) creates, lists, scales and stops the service's own
clusters, and ``gateway://`` scheduler connections go through :class:`~.sni.SNIPassthrough`.
See ``docs/dask-gateway.md``.
"""

from __future__ import annotations

from traitlets import Bool, Float, Unicode, default
from traitlets.config import LoggingConfigurable

from .api import gateway_api_handlers
from .sni import SNIPassthrough

__all__ = ["DaskGateway", "SNIPassthrough", "gateway_api_handlers"]


class DaskGateway(LoggingConfigurable):
    """Serving dask-gateway's client: API on/off and where its scheduler proxy listens."""

    enabled = Bool(
        True,
        config=True,
        help="""Serve dask-gateway's REST API at <service prefix>gateway/ (what
        ``dask_gateway.Gateway`` talks to). Off: only the service's own API.""",
    )
    proxy_listen = Unicode(
        "",
        config=True,
        help="""``host:port`` where the scheduler proxy of dask-gateway clients listens (TLS
        passthrough routed by SNI ``daskgateway-<cluster>``; a TCP port of its own, since
        configurable-http-proxy and HTTP ingresses cannot carry it). Empty: no proxy, and
        ``gateway.connect``/``get_client`` cannot reach schedulers. Kubernetes: expose this port
        with a Service of its own (docs/dask-gateway.md). Port 0 picks a free port (tests).""",
    )
    handshake_timeout = Float(
        10.0, config=True, help="Seconds a proxy connection may take to send its TLS ClientHello."
    )
    version = Unicode(
        help="What ``GET gateway/api/version`` reports (``Gateway().get_versions()['server']``)."
    )

    @default("version")
    def _default_version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("cmsaf-hub")
        except PackageNotFoundError:
            return "unknown"
