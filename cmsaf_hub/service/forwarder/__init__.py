"""Clusters exposed through the hub's proxy: owner-only dashboards and scheduler relays.

The cluster service mounts :func:`forwarder_handlers` in its tornado application. Because the relay
lives in the service, configurable-http-proxy only needs the service's own route, which the hub
creates and restores; nothing per cluster is ever added to the proxy (see ``docs/proxy.md``).
"""

from __future__ import annotations

from typing import Any

from traitlets import Float, Integer
from traitlets.config import LoggingConfigurable

from .handlers import CommRelayHandler, DashboardHandler, TLSRelayHandler
from .target import (
    Authorizer,
    ClusterState,
    Decision,
    Resolver,
    Target,
    comm_path,
    credential_matches,
    dashboard_prefix,
    decide,
    fast_address,
    hash_credential,
    new_worker_credential,
    owner_or_admin,
    tls_path,
)

__all__ = [
    "ClusterState",
    "Decision",
    "Forwarder",
    "Target",
    "comm_path",
    "credential_matches",
    "dashboard_prefix",
    "decide",
    "fast_address",
    "forwarder_handlers",
    "hash_credential",
    "new_worker_credential",
    "owner_or_admin",
    "tls_path",
]


class Forwarder(LoggingConfigurable):
    """Limits and timings of the dashboard and scheduler relays."""

    retry_after = Integer(
        5, config=True, help="Seconds sent in Retry-After when a cluster's scheduler is not up yet (503)."
    )
    connect_timeout = Float(
        10.0, config=True, help="Seconds to wait for a scheduler's ws listener or dashboard to accept a connection."
    )
    dashboard_request_timeout = Float(
        60.0, config=True, help="Seconds a proxied dashboard HTTP request may take in total."
    )
    chunk_size = Integer(
        256 * 1024,
        config=True,
        help="""Bytes read per step when splicing a websocket relay. One chunk per direction per
        connection is in flight, which bounds the relay's memory; larger chunks trade memory for
        fewer event-loop turns on bulk transfers.""",
    )
    max_body_size = Integer(
        64 * 1024 * 1024, config=True, help="Largest dashboard HTTP response relayed, in bytes (else 502)."
    )

    def handlers(
        self, prefix: str, resolve: Resolver, hub_auth: Any, authorize: Authorizer = owner_or_admin
    ) -> list[tuple[str, type, dict[str, Any]]]:
        """URL specs for ``<prefix>clusters/<id>/dashboard/<path>``, ``.../comm`` and ``.../tls``."""
        base = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
        kwargs = {"forwarder": self, "resolve": resolve, "authorize": authorize, "hub_auth": hub_auth}
        return [
            (base + r"clusters/([^/]+)/dashboard/?(.*)", DashboardHandler, kwargs),
            (base + r"clusters/([^/]+)/comm/?", CommRelayHandler, kwargs),
            (base + r"clusters/([^/]+)/tls", TLSRelayHandler, kwargs),
        ]


def forwarder_handlers(
    prefix: str,
    resolve: Resolver,
    hub_auth: Any,
    authorize: Authorizer = owner_or_admin,
    *,
    config: Any = None,
    parent: Any = None,
) -> list[tuple[str, type, dict[str, Any]]]:
    """The URL specs the service adds to its tornado application.

    ``prefix`` is the service's URL prefix (``/services/cmsaf/``); ``resolve`` maps a cluster id to a
    :class:`Target` (or None); ``hub_auth`` is the service's ``HubOAuth``; ``authorize`` decides
    whether a hub user may use a cluster (default: owner and admins).
    """
    return Forwarder(config=config, parent=parent).handlers(prefix, resolve, hub_auth, authorize)
