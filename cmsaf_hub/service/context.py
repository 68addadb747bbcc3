"""What the service's request handlers may use of the running service: a small interface.

API handlers and web pages are handed an object with these members (the application passes
itself); they never import the application, so ``app`` depends on ``api`` and ``ui`` and not the
other way round.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from jupyterhub.services.auth import HubOAuth

from .backends.base import Backend
from .broker import Broker
from .crypto import SecretBox
from .hubapi import HubAPI
from .metrics import ServiceMetrics
from .models import ClusterRecord
from .options import ClusterOptions
from .quotas import Limits
from .reconciler import Reconciler
from .store import Store


class ServiceContext(Protocol):
    """The state and the few derived views that handlers read; handlers record targets through it."""

    log: logging.Logger
    service_prefix: str
    issuer: str
    max_request_body: int
    long_poll_max: float
    hub_auth: HubOAuth
    hub: HubAPI
    store: Store
    reconciler: Reconciler
    backend: Backend
    secrets: SecretBox
    limits: Limits
    cluster_options: ClusterOptions
    metrics: ServiceMetrics
    broker: Broker

    def cluster_model(self, record: ClusterRecord) -> dict[str, Any]: ...

    def cluster_json(self, record: ClusterRecord) -> str: ...

    async def hub_user_info(self, name: str) -> dict[str, Any] | None: ...

    def health(self) -> dict[str, Any]: ...

    def worker_credential(self, cluster_id: str) -> str: ...
