"""``Hub``: a handle on the cluster service, sync or async, in the spirit of ``dask_gateway.Gateway``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from distributed.utils import LoopRunner, SyncMethodMixin

from .config import HubConfig, resolve_config
from .http import ServiceAPI, options_schema, wait_until_running
from .options import ClusterOptions, OptionsSchema, validate_options
from .report import ClusterReport, select_statuses

class Hub(SyncMethodMixin):
    """List, create, connect to and stop your clusters.

    With no arguments inside a hub session, everything comes from the environment. Elsewhere::

        hub = Hub("https://hub.example/", token=...)   # or CMSAF_HUB_URL + CMSAF_TOKEN

    Every method returns its result when called from synchronous code and a coroutine to await
    when the handle was made with ``asynchronous=True`` (or is used inside its own running loop).
    """

    def __init__(
        self,
        hub_url: str | None = None,
        *,
        service_url: str | None = None,
        token: str | None = None,
        token_file: str | None = None,
        ca_file: str | None = None,
        config: HubConfig | None = None,
        asynchronous: bool = False,
        loop=None,
    ):
        self.config = config or resolve_config(
            hub_url=hub_url,
            service_url=service_url,
            token=token,
            token_file=token_file,
            ca_file=ca_file,
        )
        self._asynchronous = asynchronous
        self._loop_runner = LoopRunner(loop=loop, asynchronous=asynchronous)
        self._loop_runner.start()
        self._api = ServiceAPI(self.config)

    @property
    def loop(self):
        return self._loop_runner.loop

    def __repr__(self) -> str:
        return f"Hub<{self.config.service_url}>"

    # -- the calls ------------------------------------------------------------------------

    async def _options_schema(self) -> OptionsSchema:
        return options_schema(await self._api.get_options())

    async def _cluster_options(self) -> ClusterOptions:
        return ClusterOptions(await self._options_schema())

    def cluster_options(self) -> ClusterOptions:
        """The options the service offers you, with your defaults and limits (they can depend on your
        groups): set them by attribute (``options.cores = 2``) or in their notebook form, then pass
        them to :meth:`submit`, :meth:`new_cluster` or ``HubCluster(cluster_options=...)``. Its
        ``schema`` is the JSON Schema the service published."""
        return self.sync(self._cluster_options)

    async def _list_clusters(self, status: str | Iterable[str] | None = None) -> list[ClusterReport]:
        keep = select_statuses(status)
        return [r for r in map(ClusterReport.from_json, await self._api.list_clusters()) if r.status in keep]

    def list_clusters(self, status: str | Iterable[str] | None = None) -> list[ClusterReport]:
        """Your clusters as the service knows them: by default the active ones (pending, starting,
        running), like dask-gateway; ``status="all"``, one status or a list of statuses for others."""
        return self.sync(self._list_clusters, status)

    async def _get_cluster(self, cluster_id: str) -> ClusterReport:
        return ClusterReport.from_json(await self._api.get_cluster(cluster_id))

    def get_cluster(self, cluster_id: str) -> ClusterReport:
        return self.sync(self._get_cluster, cluster_id)

    async def _submit(self, options: dict[str, Any]) -> ClusterReport:
        checked = validate_options(await self._options_schema(), options)
        return ClusterReport.from_json(await self._api.create_cluster(checked))

    def submit(self, cluster_options: Mapping[str, Any] | None = None, **options: Any) -> ClusterReport:
        """Ask for a new cluster and return at once (see :meth:`new_cluster` to wait and connect).
        ``options`` given by name take precedence over ``cluster_options``."""
        return self.sync(self._submit, {**(cluster_options or {}), **options})

    async def _wait_for_cluster(self, cluster_id: str, timeout: float | None) -> ClusterReport:
        return await wait_until_running(self._api, await self._get_cluster(cluster_id), timeout)

    def wait_for_cluster(self, cluster_id: str, timeout: float | None = None) -> ClusterReport:
        """Block until the cluster runs (raises :class:`HubError` if it fails or stops first)."""
        return self.sync(self._wait_for_cluster, cluster_id, timeout)

    def new_cluster(self, cluster_options: Mapping[str, Any] | None = None, *, shutdown_on_close: bool = True,
                    **options: Any):
        """Create a cluster and return a connected :class:`HubCluster`."""
        from .cluster import HubCluster

        return HubCluster(
            hub=self,
            cluster_options=cluster_options,
            shutdown_on_close=shutdown_on_close,
            asynchronous=self._asynchronous,
            loop=self.loop,
            **options,
        )

    def connect(self, cluster_id: str, *, shutdown_on_close: bool = False):
        """Connect to an existing cluster by id (after a kernel restart, from another process...)."""
        from .cluster import HubCluster

        return HubCluster.from_id(
            cluster_id,
            hub=self,
            shutdown_on_close=shutdown_on_close,
            asynchronous=self._asynchronous,
            loop=self.loop,
        )

    async def _scale_cluster(self, cluster_id: str, workers: int) -> ClusterReport:
        return ClusterReport.from_json(await self._api.scale(cluster_id, workers))

    def scale_cluster(self, cluster_id: str, workers: int) -> ClusterReport:
        return self.sync(self._scale_cluster, cluster_id, workers)

    async def _adapt_cluster(self, cluster_id: str, minimum: int, maximum: int) -> ClusterReport:
        return ClusterReport.from_json(await self._api.adapt(cluster_id, minimum, maximum))

    def adapt_cluster(self, cluster_id: str, minimum: int, maximum: int) -> ClusterReport:
        """Let the service scale the cluster between ``minimum`` and ``maximum`` workers."""
        return self.sync(self._adapt_cluster, cluster_id, minimum, maximum)

    async def _cluster_logs(self, cluster_id: str) -> Any:
        return await self._api.logs(cluster_id)

    def cluster_logs(self, cluster_id: str) -> Any:
        return self.sync(self._cluster_logs, cluster_id)

    async def _stop_cluster(self, cluster_id: str) -> None:
        await self._api.delete_cluster(cluster_id)

    def stop_cluster(self, cluster_id: str) -> None:
        """Stop a cluster and its workers."""
        return self.sync(self._stop_cluster, cluster_id)

    # -- lifetime ---------------------------------------------------------------------------

    async def _close_http(self) -> None:
        self._api.close()

    def close(self):
        """Release the HTTP client and, in sync mode, the background event loop (await it in async mode)."""
        if self.asynchronous:
            return self._close_http()
        self.sync(self._close_http)
        self._loop_runner.stop()
        return None

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def __aenter__(self) -> Hub:
        return self

    async def __aexit__(self, *exc) -> None:
        await self._close_http()
