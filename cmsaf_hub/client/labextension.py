"""dask-labextension backed by the cluster service: every cluster of yours in the Dask sidebar.

On its own dask-labextension lists only the clusters its own server process created
(dask-labextension #204). This Jupyter server extension swaps in :class:`HubClusterManager`,
whose truth is the service's ``GET /clusters``: clusters made by a notebook, the CLI or another
session appear, and they survive JupyterLab restarts.

Enable it next to dask-labextension (``jpserver_extensions = {"cmsaf_hub.client.labextension": True}``).
What it changes:

- ``dask_labextension``'s module-level ``manager`` (read by its handlers at each request) is
  rebound to a :class:`HubClusterManager`;
- ``dask/dashboard/<id>/...`` is served by :class:`HubDashboardHandler`, which proxies to the
  cluster's dashboard below the service URL with the session's token. Its route wins because
  jupyter_server loads extensions in sorted name order (``cmsaf_hub...`` before
  ``dask_labextension``) and tornado takes the first matching rule.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import Any
from urllib.parse import urlsplit

import dask.config
from dask.utils import format_bytes
from dask_labextension.dashboardhandler import DaskDashboardHandler
from dask_labextension.manager import DaskClusterManager
from jupyter_server.utils import url_path_join
from tornado import web

from .cluster import HubCluster
from .errors import ClusterNotFoundError, HubError
from .hub import Hub
from .report import ClusterReport

log = logging.getLogger("cmsaf_hub.client.labextension")

#: dask-labextension's routes accept only ids shaped like a UUID.
LAB_ID = re.compile(r"^\w+-\w+-\w+-\w+-\w+$")
_LAB_ID_NAMESPACE = uuid.UUID("5d1c7e52-3c4e-4b0e-9a59-2f0c1b7a6e10")


def lab_id_for(service_id: str) -> str:
    """A stable id the labextension's routes accept, for a service cluster id."""
    if LAB_ID.match(service_id):
        return service_id
    return str(uuid.uuid5(_LAB_ID_NAMESPACE, service_id))


def make_hub_cluster_model(lab_id: str, report: ClusterReport) -> dict[str, Any]:
    """The labextension's cluster model, from the service's report (no scheduler connection needed)."""
    running = report.workers.running
    cores = int(report.options.get("cores") or 1)
    memory_gib = float(report.options.get("memory") or 0)
    # the sidebar's NEW makes a cluster with the default options, often no workers: say what to do
    idle = report.workers.requested == 0 and not report.adapt
    model: dict[str, Any] = {
        "id": lab_id,
        "name": f"HubCluster {report.id}" + (" (no workers yet: Scale adds some)" if idle else ""),
        "scheduler_address": report.scheduler_address or "",
        "dashboard_link": report.dashboard_link or "",
        "workers": running,
        "memory": format_bytes(int(running * memory_gib * 2**30)),
        "cores": running * cores,
    }
    if report.adapt:
        model["adapt"] = {"minimum": report.adapt["minimum"], "maximum": report.adapt["maximum"]}
    return model


class HubClusterManager(DaskClusterManager):
    """dask-labextension's manager API, answered from the service instead of in-process clusters.

    ``list_clusters`` and ``get_cluster`` are synchronous in dask-labextension, so they read a
    cache; each call schedules a refresh from the service when the cache is older than
    ``refresh_interval`` seconds (the sidebar polls, so it stays current). ``await refresh()``
    forces one.
    """

    def __init__(self, hub_config=None, refresh_interval: float = 2.0):
        self.hub_config = hub_config
        self.refresh_interval = refresh_interval
        self._hub: Hub | None = None
        self._reports: dict[str, ClusterReport] = {}
        self._refreshed_at = float("-inf")
        #: bumped by every refresh and every change, so that an older listing never overwrites a newer state
        self._generation = 0
        self._refreshing: asyncio.Task | None = None
        super().__init__()

    def get_hub(self) -> Hub:
        if self._hub is None:
            self._hub = Hub(config=self.hub_config, asynchronous=True)
            self.hub_config = self._hub.config
        return self._hub

    def _service_id(self, lab_id: str) -> str | None:
        report = self._reports.get(lab_id)
        return report.id if report else None

    async def refresh(self) -> None:
        """Replace the cache with the service's list of your live clusters."""
        loop = asyncio.get_running_loop()
        self._generation += 1
        generation = self._generation
        reports = await self.get_hub().list_clusters()
        if generation != self._generation:
            return  # a later refresh or change (e.g. a stop) happened while this one was in flight
        self._reports = {lab_id_for(r.id): r for r in reports if not r.is_ending}
        self._refreshed_at = loop.time()

    def _refresh_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        stale = loop.time() - self._refreshed_at > self.refresh_interval
        if stale and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = loop.create_task(self._refresh_logged())

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except HubError as e:
            log.warning("could not list clusters from the service: %s", e)

    # -- dask-labextension's manager API ----------------------------------------------------

    async def start_cluster(self, cluster_id: str = "", configuration: dict | None = None) -> dict:
        """Create a HubCluster with the factory's kwargs and the sidebar's defaults; leave it running."""
        configuration = dask.config.merge(
            dask.config.get("labextension.default"), configuration or {}
        )
        kwargs = {
            key.replace("-", "_"): value
            for key, value in dask.config.get("labextension.factory.kwargs").items()
        }
        if configuration.get("workers") is not None and not configuration.get("adapt"):
            kwargs.setdefault("workers", configuration["workers"])
        cluster = await HubCluster(
            hub=self.get_hub(), shutdown_on_close=False, asynchronous=True, **kwargs
        )
        try:
            if configuration.get("adapt"):
                await cluster.adapt(**configuration["adapt"])
            report = cluster.report
        finally:
            await cluster.close()  # disconnects only; the service keeps the cluster
        lab_id = cluster_id or lab_id_for(report.id)
        self._generation += 1
        self._reports[lab_id] = report
        return make_hub_cluster_model(lab_id, report)

    async def close_cluster(self, cluster_id: str) -> dict | None:
        service_id = self._service_id(cluster_id)
        if service_id is None:
            return None
        try:
            await self.get_hub().stop_cluster(service_id)
        except ClusterNotFoundError:
            pass  # already gone: the sidebar only needs it off the list
        self._generation += 1
        return make_hub_cluster_model(cluster_id, self._reports.pop(cluster_id))

    def get_cluster(self, cluster_id: str) -> dict | None:
        self._refresh_soon()
        report = self._reports.get(cluster_id)
        return make_hub_cluster_model(cluster_id, report) if report else None

    def list_clusters(self) -> list[dict]:
        self._refresh_soon()
        return [make_hub_cluster_model(lab_id, r) for lab_id, r in self._reports.items()]

    async def scale_cluster(self, cluster_id: str, n: int) -> dict | None:
        service_id = self._service_id(cluster_id)
        if service_id is None:
            return None
        report = await self.get_hub().scale_cluster(service_id, n)
        self._generation += 1
        self._reports[cluster_id] = report
        return make_hub_cluster_model(cluster_id, report)

    async def adapt_cluster_async(self, cluster_id: str, minimum: int, maximum: int) -> dict | None:
        service_id = self._service_id(cluster_id)
        if service_id is None:
            return None
        report = await self.get_hub().adapt_cluster(service_id, minimum, maximum)
        self._reports[cluster_id] = report
        return make_hub_cluster_model(cluster_id, report)

    def adapt_cluster(self, cluster_id: str, minimum: int, maximum: int) -> dict | None:
        """Synchronous in dask-labextension: send the request in the background, answer at once.

        The answer shows the asked-for bounds; a refusal is logged and the next refresh shows
        the service's real state.
        """
        report = self._reports.get(cluster_id)
        if report is None:
            return None
        task = asyncio.get_running_loop().create_task(
            self.adapt_cluster_async(cluster_id, minimum, maximum)
        )
        task.add_done_callback(_log_failure)
        model = make_hub_cluster_model(cluster_id, report)
        model["adapt"] = {"minimum": minimum, "maximum": maximum}
        return model

    async def close(self) -> None:
        """Release the HTTP client. Clusters keep running: they belong to the service, not to us."""
        if self._hub is not None:
            await self._hub.close()
            self._hub = None

    def dashboard_target(self, cluster_id: str) -> str | None:
        """The cluster's dashboard root as the session reaches the service (not the public URL)."""
        service_id = self._service_id(cluster_id)
        if service_id is None:
            return None
        return f"{self.get_hub().config.service_url}clusters/{service_id}/dashboard/"


#: Responses whose text may name the dashboard's own URLs (pages, scripts, stylesheets, JSON).
_TEXT_TYPES = ("text/", "application/javascript", "application/json", "application/x-javascript")


def rewrite_dashboard_paths(body: bytes, content_type: str, service_prefix: str, lab_prefix: str) -> bytes:
    """The dashboard's absolute paths below the service (``/services/cmsaf/clusters/<id>/dashboard/``)
    turned into this proxy's (``<base_url>dask/dashboard/<lab id>/``), in text responses (pure).

    The scheduler serves its dashboard under the service's prefix, so its pages load Bokeh's assets
    and open Bokeh's websocket there. A browser that has only logged into JupyterLab has no cookie
    for the service and gets 401 for every such request: the panels stay blank. Through this proxy
    every request carries the session's token instead.
    """
    if not content_type.startswith(_TEXT_TYPES):
        return body
    return body.replace(service_prefix.encode(), lab_prefix.encode())


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("adapting a cluster failed: %s", task.exception())


class HubDashboardHandler(DaskDashboardHandler):
    """``dask/dashboard/<id>/<path>`` → ``<service>/clusters/<service id>/dashboard/<path>``, with the token.

    dask-labextension's own handler proxies to the root of the dashboard's host and port, which
    loses the service's path prefix and carries no credential.
    """

    def initialize(self, **kwargs) -> None:
        super().initialize(**kwargs)

        def rewrite(response) -> None:  # jupyter-server-proxy passes the arguments a hook names (no self)
            self._rewrite_paths(response)

        self.rewrite_response = [rewrite]

    def _manager(self) -> HubClusterManager:
        return self.settings["cmsaf_cluster_manager"]

    def _rewrite_paths(self, response) -> None:
        """jupyter-server-proxy's response hook: the dashboard's own paths point back at this proxy."""
        cluster_id = self.path_kwargs["cluster_id"]
        root = self._manager().dashboard_target(cluster_id)
        if root is None:
            return
        service_prefix = urlsplit(root).path
        lab_prefix = url_path_join(self.settings["base_url"], "dask/dashboard", cluster_id) + "/"
        content_type = response.headers.get("Content-Type", "")
        response.body = rewrite_dashboard_paths(response.body, content_type, service_prefix, lab_prefix)
        location = response.headers.get("Location")
        if location and location.startswith(service_prefix):
            response.headers["Location"] = lab_prefix + location[len(service_prefix):]

    def _target(self, cluster_id: str) -> tuple[str, int, str]:
        root = self._manager().dashboard_target(cluster_id)
        if root is None:
            raise web.HTTPError(404, f"Dask cluster {cluster_id} not found")
        parsed = urlsplit(root)
        if parsed.scheme != "http":
            # jupyter-server-proxy speaks plain http to its targets.
            raise web.HTTPError(502, "the dashboard proxy needs an http:// CMSAF_SERVICE_URL")
        return parsed.hostname, parsed.port or 80, parsed.path

    def proxy_request_headers(self):
        """The browser's headers minus its Jupyter credentials (never for the service), plus the token."""
        headers = self.request.headers.copy()
        # Accept-Encoding: uncompressed bodies, so that _rewrite_paths can read them
        for name in ("Cookie", "Authorization", "X-XSRFToken", "Accept-Encoding"):
            headers.pop(name, None)
        headers["Authorization"] = f"token {self._manager().get_hub().config.token}"
        return headers

    def proxy(self, cluster_id, proxied_path):
        host, port, prefix = self._target(cluster_id)
        return super(DaskDashboardHandler, self).proxy(
            host, port, url_path_join(prefix, proxied_path.lstrip("/"))
        )

    async def open(self, cluster_id, proxied_path):
        host, port, prefix = self._target(cluster_id)
        return await self.proxy_open(host, port, url_path_join(prefix, proxied_path.lstrip("/")))


def install_manager(manager: HubClusterManager) -> None:
    """Make dask-labextension's handlers use ``manager`` (they read the module global per request)."""
    import dask_labextension.clusterhandler
    import dask_labextension.dashboardhandler
    import dask_labextension.manager

    for module in (
        dask_labextension.manager,
        dask_labextension.clusterhandler,
        dask_labextension.dashboardhandler,
    ):
        if not hasattr(module, "manager"):
            raise RuntimeError(f"{module.__name__} has no 'manager': unsupported dask-labextension")
        module.manager = manager


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "cmsaf_hub.client.labextension"}]


def _load_jupyter_server_extension(serverapp) -> None:
    manager = HubClusterManager()
    install_manager(manager)
    web_app = serverapp.web_app
    web_app.settings["cmsaf_cluster_manager"] = manager
    base_url = web_app.settings["base_url"]
    dashboard_path = url_path_join(
        base_url, r"dask/dashboard/(?P<cluster_id>\w+-\w+-\w+-\w+-\w+)(?P<proxied_path>.+)"
    )
    web_app.add_handlers(".*$", [(dashboard_path, HubDashboardHandler, {"host_allowlist": _is_service_host})])
    serverapp.log.info("cmsaf_hub.client.labextension: Dask sidebar lists the cluster service's clusters")


def _is_service_host(handler: HubDashboardHandler, host: str) -> bool:
    """Proxy only to the configured service's host (the target never comes from the request)."""
    return host == urlsplit(handler._manager().get_hub().config.service_url).hostname
