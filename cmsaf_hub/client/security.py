"""Make plain ``Client("hub(s)://<hub>/services/cmsaf/clusters/<id>/tls")`` (the fast path) and
``Client("ws(s)://<hub>/services/cmsaf/clusters/<id>/comm")`` work in a session.

dask-labextension's "inject client code" pastes exactly that, with no token. Sessions set
``DASK_DISTRIBUTED__CLIENT__SECURITY_LOADER=cmsaf_hub.client.security.security_loader``;
``distributed.Client`` then calls :func:`security_loader` for any address given without a
``security=`` argument, and it adds the user's hub token, but only for the hub the session's
configuration names, so the token never goes to another host.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

from ..comm import hub_security
from .config import HubConfig, resolve_config
from .errors import ConfigurationError

#: The path every cluster's comm relay has below the service URL.
COMM_PATH = "clusters/"


def is_service_comm_address(address: str, config: HubConfig) -> bool:
    """Is ``address`` a comm of the configured service (same host, port, prefix): its ``ws(s)://``
    relay (``.../comm``) or its fast path (``hub(s)://.../tls``)?"""
    target, service = urlsplit(address), urlsplit(config.service_url)
    default_port = {"http": 80, "https": 443}[service.scheme]
    if target.scheme == {"http": "hub", "https": "hubs"}[service.scheme]:
        try:
            same_port = (target.port or default_port) == (service.port or default_port)
        except ValueError:
            return False
        return (
            target.hostname == service.hostname
            and same_port
            and target.path.startswith(service.path + COMM_PATH)
            and target.path.endswith("/tls")
        )
    expected_scheme = {"http": "ws", "https": "wss"}[service.scheme]
    return (
        target.scheme == expected_scheme
        and target.netloc == service.netloc
        and target.path.startswith(service.path + COMM_PATH)
        and target.path.endswith("/comm")
    )


def security_loader(info: dict[str, Any]):
    """``distributed.client.security-loader`` hook: token-bearing ``Security`` for our relays, else None."""
    try:
        config = resolve_config()
    except ConfigurationError:
        return None
    if not is_service_comm_address(info.get("address", ""), config):
        return None
    return scheduler_security(config)


def scheduler_security(config: HubConfig):
    """What a Dask comm needs to pass the hub's proxy: the user's token as a header, the hub's CA."""
    context = ssl.create_default_context(cafile=config.ca_file) if config.ca_file else None
    return hub_security(config.token, ssl_context=context)
