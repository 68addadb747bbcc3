"""Use the facility's Dask clusters from a notebook, a script or CI: ``Hub`` and ``HubCluster``.

Inside a hub session::

    from cmsaf_hub.client import HubCluster
    cluster = HubCluster(workers=4)
    client = cluster.get_client()

See docs/client.md.
"""

from .cluster import HubCluster
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
from .hub import Hub
from .report import ClusterReport, WorkerCounts

__all__ = [
    "AuthenticationError",
    "ClusterNotFoundError",
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
