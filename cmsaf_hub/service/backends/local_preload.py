"""What runs inside the local backend's Dask processes (imported there, by name).

- :func:`dask_setup`, the scheduler preload: records every listener's address for the service.
  ``dask scheduler --scheduler-file`` records only the first listener; the service needs the TLS
  address (workers, clients) and the ``wss://`` one (the hub's websocket relay). Written to
  ``addresses.json`` in the scheduler's working directory, atomically.
- :class:`ClientCertScheduler` and :class:`ClientCertWorker`: a scheduler and a worker whose HTTP
  server (dashboard, ``/metrics``, ``/health``) speaks HTTPS and demands the cluster's client
  certificate, like their comm listeners do. Out of the box distributed serves it as plain HTTP,
  and with ``distributed.scheduler.dashboard.tls`` as HTTPS that accepts any client: either way
  every local user could read every cluster's dashboard and metrics, bypassing the forwarder.
"""

from __future__ import annotations

import json
import os
import ssl
from typing import Any

import dask
from distributed import Scheduler, Worker

ADDRESS_FILE = "addresses.json"


def dask_setup(scheduler) -> None:
    dashboard = scheduler.services.get("dashboard")
    record = {
        "addresses": [listener.contact_address for listener in scheduler.listeners],
        "dashboard_port": dashboard.port if dashboard is not None else None,
        "pid": os.getpid(),
    }
    tmp = ADDRESS_FILE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, ADDRESS_FILE)


def client_cert_context(security, role: str) -> ssl.SSLContext:
    """The server context of the node's comm listeners (the cluster's CA, client cert required)."""
    if dask.config.get("distributed.scheduler.dashboard.tls.cert", None):
        # distributed would replace our context by one that accepts any client
        raise RuntimeError("distributed.scheduler.dashboard.tls is set: refusing a dashboard without client certificates")
    context = security.get_listen_args(role)["ssl_context"]
    if context is None or context.verify_mode != ssl.CERT_REQUIRED:
        raise RuntimeError("the node has no TLS credentials: refusing to serve HTTP without client certificates")
    return context


class _ClientCertHTTP:
    """Mixin: the node's HTTP server uses :func:`client_cert_context` from its first connection on."""

    _tls_role = ""

    def start_http_server(self, routes: Any, dashboard_address: Any, default_port: int = 0, ssl_options: Any = None):
        context = client_cert_context(self.security, self._tls_role)  # type: ignore[attr-defined]
        return super().start_http_server(routes, dashboard_address, default_port, ssl_options=context)  # type: ignore[misc]


class ClientCertScheduler(_ClientCertHTTP, Scheduler):
    """A scheduler whose dashboard answers only holders of the cluster's certificate."""

    _tls_role = "scheduler"


class ClientCertWorker(_ClientCertHTTP, Worker):
    """A worker whose ``/metrics``/``/health`` server answers only holders of the cluster's certificate."""

    _tls_role = "worker"
