"""``HubCluster``: a Dask cluster run by the cmsaf service, usable like any ``distributed`` cluster."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

import dask.config
from distributed.core import Status, rpc
from distributed.deploy.cluster import Cluster

from .config import resolve_config
from .display import render_cluster_html
from .errors import HubError
from .hub import Hub
from .http import ServiceAPI, options_schema, wait_until_running
from .options import validate_options
from .report import ClusterReport
from .security import scheduler_security

log = logging.getLogger("cmsaf_hub.client")

#: Seconds between two refreshes of the worker progress shown in the notebook.
DEFAULT_REFRESH_INTERVAL = 5.0


class HubCluster(Cluster):
    """A Dask cluster created (or found) through the cluster service.

    ``HubCluster(workers=2, cores=1, memory=2.0)`` validates the options against the service's
    ``/options`` schema, asks for the cluster, waits for its scheduler and connects to it through
    the hub. ``HubCluster.from_id(id)`` reconnects to an existing one. With ``shutdown_on_close``
    (the default for clusters this object created) :meth:`close` stops the cluster too; otherwise
    it only disconnects and the cluster keeps running.

    Parameters
    ----------
    hub : Hub, optional
        Where the service is and which token to use; by default taken from the environment.
    shutdown_on_close : bool, optional
        Stop the cluster on :meth:`close`. Defaults to True when creating, False for ``from_id``.
    start_timeout : float, optional
        Seconds to wait for the cluster to run (``cmsaf.client.start-timeout``, default none).
    cluster_options : ClusterOptions or mapping, optional
        Options from :meth:`Hub.cluster_options` (e.g. set in its notebook form); ``**options``
        given too take precedence.
    **options
        Cluster options (``workers``, ``cores``, ``memory``, ``image``, ``site``... as published
        by the service).
    """

    def __init__(
        self,
        *,
        hub: Hub | None = None,
        shutdown_on_close: bool | None = None,
        start_timeout: float | None = None,
        asynchronous: bool = False,
        loop=None,
        _cluster_id: str | None = None,
        cluster_options: Mapping[str, Any] | None = None,
        **options: Any,
    ):
        self.config = hub.config if hub is not None else resolve_config()
        self.cluster_id = _cluster_id
        self.requested_options = {**(cluster_options or {}), **options}
        self.shutdown_on_close = (
            shutdown_on_close if shutdown_on_close is not None else _cluster_id is None
        )
        self.start_timeout = (
            start_timeout
            if start_timeout is not None
            else dask.config.get("cmsaf.client.start-timeout", None)
        )
        self.refresh_interval = dask.config.get(
            "cmsaf.client.refresh-interval", DEFAULT_REFRESH_INTERVAL
        )
        self.security = scheduler_security(self.config)
        self.report: ClusterReport | None = None
        self._api: ServiceAPI | None = None
        self._refresh_task: asyncio.Task | None = None
        super().__init__(asynchronous=asynchronous, loop=loop, name=_cluster_id or "new")
        if not self.called_from_running_loop:
            self._loop_runner.start()
            try:
                self.sync(self._start)
            except BaseException:
                self._loop_runner.stop()
                raise

    @classmethod
    def from_id(
        cls,
        cluster_id: str,
        *,
        hub: Hub | None = None,
        shutdown_on_close: bool = False,
        asynchronous: bool = False,
        loop=None,
    ) -> HubCluster:
        """Connect to a cluster that already exists, e.g. after a kernel or server restart."""
        return cls(
            hub=hub,
            shutdown_on_close=shutdown_on_close,
            asynchronous=asynchronous,
            loop=loop,
            _cluster_id=cluster_id,
        )

    def __await__(self):
        async def _():
            if self.status == Status.created:
                await self._start()
            return self

        return _().__await__()

    async def _start(self) -> None:
        if self.status != Status.created:
            return
        self._api = ServiceAPI(self.config)
        created_here = self.cluster_id is None
        try:
            if created_here:
                schema = options_schema(await self._api.get_options())
                checked = validate_options(schema, self.requested_options)
                report = ClusterReport.from_json(await self._api.create_cluster(checked))
                self.cluster_id = report.id
                self.name = report.id
                self._log(f"Created cluster {report.id}")
            else:
                report = ClusterReport.from_json(await self._api.get_cluster(self.cluster_id))
            self.report = await wait_until_running(self._api, report, self.start_timeout)
            if not self.report.scheduler_address:
                raise HubError(f"cluster {self.cluster_id} runs but has no scheduler address")
            self.scheduler_comm = rpc(
                self.report.scheduler_address,
                connection_args=self.security.get_connection_args("client"),
            )
            await super()._start()
        except BaseException:
            if created_here and self.cluster_id is not None and self.shutdown_on_close:
                with suppress(Exception):
                    await self._api.delete_cluster(self.cluster_id)
            if self.scheduler_comm is not None:
                await self.scheduler_comm.close_rpc()
            self._api.close()
            self.status = Status.closed  # everything released: nothing left for close() to do
            raise
        self._refresh_task = asyncio.ensure_future(self._keep_report_fresh())

    async def _keep_report_fresh(self) -> None:
        """Refresh worker progress for the notebook view while connected."""
        while self.status == Status.running:
            await asyncio.sleep(self.refresh_interval)
            try:
                self.report = ClusterReport.from_json(await self._api.get_cluster(self.cluster_id))
            except HubError as e:
                log.debug("could not refresh cluster %s: %s", self.cluster_id, e)

    # -- scaling: done by the service, not by a client-side Adaptive ----------------------------

    async def _scale(self, n: int) -> None:
        self.report = ClusterReport.from_json(await self._api.scale(self.cluster_id, n))

    def scale(self, n: int):
        """Ask the service for ``n`` workers (turns adaptive scaling off)."""
        return self.sync(self._scale, n)

    async def _adapt(self, minimum: int, maximum: int) -> None:
        self.report = ClusterReport.from_json(
            await self._api.adapt(self.cluster_id, minimum, maximum)
        )

    def adapt(self, minimum: int = 0, maximum: int | None = None):
        """Let the service scale between ``minimum`` and ``maximum`` workers (default max: the current count)."""
        if maximum is None:
            maximum = max(minimum, self.report.workers.requested if self.report else minimum)
        return self.sync(self._adapt, minimum, maximum)

    # -- views ----------------------------------------------------------------------------------

    @property
    def dashboard_link(self) -> str:
        return (self.report.dashboard_link if self.report else None) or ""

    def get_client(self, set_as_default: bool = True):
        """A ``distributed.Client`` connected through the hub, in this cluster's sync/async mode."""
        from distributed import Client

        return Client(
            self,
            security=self.security,
            set_as_default=set_as_default,
            asynchronous=self.asynchronous,
            loop=self.loop,
        )

    def _repr_html_(self, cluster_status=None) -> str:
        if self.report is None:
            return f"<p>HubCluster {self.cluster_id or ''}: {self.status.name}</p>"
        return render_cluster_html(
            self.report,
            self.config.service_url,
            connected_workers=len(self.scheduler_info.get("workers", {})),
        )

    def _scaling_status(self) -> str:
        if self.report is None:
            return ""
        mode = "Adaptive" if self.report.adapt else "Manual"
        w = self.report.workers
        return (
            f"<table><tr><td>Scaling mode: {mode}</td></tr>"
            f"<tr><td>Workers: {w.running} / {w.requested}</td></tr></table>"
        )

    # -- lifetime -------------------------------------------------------------------------------

    async def _close(self) -> None:
        if self.status == Status.closed:
            return
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._refresh_task
        await super()._close()
        if self._api is not None:
            try:
                if self.shutdown_on_close and self.cluster_id is not None:
                    await self._api.delete_cluster(self.cluster_id)
            finally:
                self._api.close()

    def close(self, timeout: float | None = None):
        result = super().close(timeout=timeout)
        if not self.asynchronous:
            self._loop_runner.stop()
        return result

    def shutdown(self, timeout: float | None = None):
        """Stop the cluster on the service and close this handle, whatever ``shutdown_on_close`` says
        (as dask-gateway's ``GatewayCluster.shutdown``): a cluster reconnected with ``from_id`` is
        otherwise left running by ``close``. Await it in asynchronous mode."""
        self.shutdown_on_close = True
        return self.close(timeout=timeout)
