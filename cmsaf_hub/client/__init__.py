"""Use the facility's Dask clusters from a notebook, a script or CI: ``Hub`` and ``HubCluster``.

Inside a hub session::

    from cmsaf_hub.client import HubCluster
    cluster = HubCluster(workers=4)
    client = cluster.get_client()

See docs/client.md.
"""

from .config import HubConfig, resolve_config
from .errors import (
    AuthenticationError,
    ClusterNotFoundError,
    ConfigurationError,
    HubError,
    HubUnreachableError,
    OptionsError,
    RequestRejectedError,
    ServiceError,
    ServiceResponseError,
)
from .options import ClusterOptions
from .report import ClusterReport, WorkerCounts

__all__ = [
    "AuthenticationError",
    "ClusterNotFoundError",
    "ClusterOptions",
    "ClusterReport",
    "ConfigurationError",
    "Hub",
    "HubCluster",
    "HubConfig",
    "HubError",
    "HubUnreachableError",
    "OptionsError",
    "RequestRejectedError",
    "ServiceError",
    "ServiceResponseError",
    "WorkerCounts",
    "resolve_config",
]


def __getattr__(name: str):
    """``Hub`` and ``HubCluster`` import distributed (~0.5 s): only when asked for, so the CLI stays quick."""
    if name == "Hub":
        from .hub import Hub

        return Hub
    if name == "HubCluster":
        from .cluster import HubCluster

        return HubCluster
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
