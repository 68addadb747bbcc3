"""What the forwarder needs to know about one cluster, and the pure access rules applied to it.

The forwarder never reads the service's database: the service hands it a *resolver*
(``cluster_id -> Target | None``) and, optionally, an authorization callback. Everything here is
plain data and pure functions so the rules can be read (and tested) without any I/O.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


class ClusterState(str, enum.Enum):
    """The three states the forwarder distinguishes (the service maps its own statuses onto them)."""

    STARTING = "starting"  # accepted, scheduler not reachable yet -> 503 + Retry-After
    RUNNING = "running"  # scheduler up: relay
    STOPPED = "stopped"  # stopping, stopped or failed -> 404 (to those allowed to see it)


@dataclass(frozen=True)
class Target:
    """One cluster as the forwarder sees it.

    ``scheduler_ws_address`` is the scheduler's ``ws://``/``wss://`` listener as the service reaches
    it (``ws://127.0.0.1:40123``); ``dashboard_address`` is its dashboard's HTTP root
    (``http://127.0.0.1:40124``), serving under :func:`dashboard_prefix`.
    """

    cluster_id: str
    owner: str
    state: ClusterState
    scheduler_ws_address: str | None = None
    dashboard_address: str | None = None
    #: sha256 hex digest of the per-cluster worker credential (the secret itself is never stored here).
    worker_credential_sha256: str | None = field(default=None, repr=False)
    #: TLS context for ``wss://``/``https://`` upstream legs (the cluster's own CA); None for loopback ws.
    upstream_ssl: ssl.SSLContext | None = field(default=None, repr=False)
    #: The scheduler's TLS listener (``tls://10.0.0.5:8786``), target of the fast path's raw splice.
    scheduler_tls_address: str | None = None
    #: The cluster's certificate and private key (PEM), handed to owner/admin clients of the fast path.
    tls_pem: tuple[str, str] | None = field(default=None, repr=False)


#: ``await resolve(cluster_id)`` -> the cluster, or None when no such cluster exists.
Resolver = Callable[[str], Awaitable["Target | None"]]
#: ``authorize(hub_user_model, target)`` -> may this hub user use this cluster.
Authorizer = Callable[[dict[str, Any], Target], bool]


class Decision(enum.Enum):
    """The outcome of the access rules, with the HTTP status each maps to."""

    ALLOW = 200
    UNAUTHENTICATED = 401
    FORBIDDEN = 403
    GONE = 404
    NOT_READY = 503


def owner_or_admin(user: dict[str, Any], target: Target) -> bool:
    """Default authorization: the cluster's owner and hub admins."""
    return user.get("name") == target.owner or bool(user.get("admin"))


def hash_credential(secret: str) -> str:
    """The digest the service stores for a worker credential."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_worker_credential() -> tuple[str, str]:
    """A fresh per-cluster worker credential: ``(secret for the workers, digest for the service)``."""
    secret = secrets.token_urlsafe(32)
    return secret, hash_credential(secret)


def credential_matches(target: Target | None, presented: str | None) -> bool:
    """Constant-time check of a presented worker credential against the cluster's digest."""
    if target is None or not target.worker_credential_sha256 or not presented:
        return False
    return hmac.compare_digest(hash_credential(presented), target.worker_credential_sha256)


def decide(
    target: Target | None,
    user: dict[str, Any] | None,
    authorize: Authorizer,
    *,
    worker_credential_ok: bool = False,
) -> Decision:
    """Apply the access rules in the order that leaks nothing.

    Unknown and foreign clusters give the same 403, so only those allowed to see a cluster learn
    whether it exists, is starting, or has stopped.
    """
    if not worker_credential_ok:
        if user is None:
            return Decision.UNAUTHENTICATED
        if target is None or not authorize(user, target):
            return Decision.FORBIDDEN
    assert target is not None  # a matching credential implies a known target
    if target.state is ClusterState.STOPPED:
        return Decision.GONE
    if target.state is ClusterState.STARTING:
        return Decision.NOT_READY
    return Decision.ALLOW


def dashboard_prefix(service_prefix: str, cluster_id: str) -> str:
    """The URL path prefix a cluster's dashboard must be started with (``--dashboard-prefix``).

    The forwarder passes request paths through unchanged, so the scheduler must serve its dashboard
    under exactly this prefix for its links, static files and Bokeh websockets to work.
    """
    return f"/{service_prefix.strip('/')}/clusters/{cluster_id}/dashboard".replace("//", "/")


def tls_path(service_prefix: str, cluster_id: str) -> str:
    """The URL path of a cluster's fast path (raw TLS to the scheduler after a websocket upgrade)."""
    return f"/{service_prefix.strip('/')}/clusters/{cluster_id}/tls".replace("//", "/")


def fast_address(public_base: str, cluster_id: str) -> str | None:
    """The fast-path address of a cluster below the public service URL (``https://hub/services/cmsaf/``).

    ``hubs://hub:443/services/cmsaf/clusters/<id>/tls`` for an ``https://`` hub, ``hub://`` for an
    ``http://`` one, with the port always explicit; None when the public URL is not absolute.
    """
    scheme, sep, rest = public_base.partition("://")
    if not sep or scheme not in ("http", "https"):
        return None
    netloc, _, path = rest.partition("/")
    if ":" not in netloc.rpartition("]")[2]:
        netloc += ":443" if scheme == "https" else ":80"
    return f"{'hubs' if scheme == 'https' else 'hub'}://{netloc}{tls_path('/' + path, cluster_id)}"


def comm_path(service_prefix: str, cluster_id: str) -> str:
    """The URL path of a cluster's scheduler relay, below the hub's public URL."""
    return f"/{service_prefix.strip('/')}/clusters/{cluster_id}/comm".replace("//", "/")
