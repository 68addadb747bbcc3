"""dask-gateway's REST API over this service's store, reconciler, options and quotas.

What the ``dask-gateway`` client package speaks (``dask_gateway/client.py``; the server side is
``dask_gateway_server/routes.py``), below ``<service prefix>gateway/``: ``GET api/version``,
``GET api/v1/options``, ``GET|POST api/v1/clusters/``, ``GET|DELETE api/v1/clusters/<name>``
(``?wait``), ``POST api/v1/clusters/<name>/scale|adapt``. Cluster names are this service's cluster
ids, so a cluster made here shows up in the service's own API, pages and CLI, and the other way
round.

Authentication is the hub's: the client's ``JupyterHubAuth`` sends ``Authorization: jupyterhub
<hub token>`` after a ``401``. The create, scale and adapt handlers are the service's own, with
the request and the answer translated, so validation, quotas and clamping are one code path.
"""

from __future__ import annotations

import time
from typing import Any

from ..api.base import APIError, BaseAPIHandler
from ..api.clusters import AdaptHandler, ClusterHandlerBase, ClustersHandler, ScaleHandler
from ..models import ClusterRecord, ClusterStatus, ClusterTarget
from ..options import OptionField

#: dask-gateway's status names for this service's statuses (its ClusterStatus enum has no "starting").
GATEWAY_STATUS = {
    ClusterStatus.PENDING: "PENDING",
    ClusterStatus.STARTING: "PENDING",
    ClusterStatus.RUNNING: "RUNNING",
    ClusterStatus.STOPPING: "STOPPING",
    ClusterStatus.STOPPED: "STOPPED",
    ClusterStatus.FAILED: "FAILED",
}
#: Seconds ``GET clusters/<name>?wait`` holds the request at most (dask-gateway-server's figure).
WAIT_SECONDS = 20.0


def option_spec(f: OptionField) -> dict[str, Any] | None:
    """One field as dask-gateway's option specification (``Options._from_spec``); None if it offers no choice."""
    if f.choices is not None:
        if all(c is None for c in f.choices):
            return None  # only "unset" is allowed: nothing for the user to pick
        spec: dict[str, Any] = {"type": "select", "options": list(f.choices)}
    elif f.kind == "integer":
        spec = {"type": "int", "min": None if f.minimum is None else int(f.minimum),
                "max": None if f.maximum is None else int(f.maximum)}
    elif f.kind == "number":
        spec = {"type": "float", "min": f.minimum, "max": f.maximum}
    else:
        spec = {"type": "string"}
    default = f.default
    if default is None and spec["type"] == "string":
        default = ""  # dask-gateway's String field needs a string; "" stands for unset (see gateway_options)
    return {"field": f.name, "label": f.help or f.name, "default": default, "spec": spec}


def gateway_options(fields: list[OptionField], requested: dict[str, Any]) -> dict[str, Any]:
    """dask-gateway ``cluster_options`` -> this service's options (validated afterwards as usual)."""
    by_name = {f.name: f for f in fields}
    return {
        name: None if value == "" and name in by_name and by_name[name].nullable and by_name[name].kind == "string"
        else value
        for name, value in requested.items()
    }


def is_active(record: ClusterRecord) -> bool:
    return record.status.active and record.target is ClusterTarget.RUNNING


def epoch_ms(ts: float | None) -> int | None:
    return None if ts is None else int(ts * 1000)


class GatewayAPIHandler(BaseAPIHandler):
    """The service's API handler with dask-gateway's authentication dance and error statuses."""

    def initialize(self, service: Any, gateway: Any) -> None:  # type: ignore[override]
        super().initialize(service)
        self.gateway = gateway

    async def prepare(self) -> None:
        scheme, _, value = self.request.headers.get("Authorization", "").partition(" ")
        if self.public:
            await super().prepare()
            return
        if scheme.lower() not in ("jupyterhub", "token", "bearer") or not value.strip():
            # dask-gateway's client sends its credentials only after a 401
            raise APIError(401, "authentication required: 'Authorization: jupyterhub <hub API token>'")
        self.request.headers["Authorization"] = f"token {value.strip()}"
        await super().prepare()

    def write_error(self, status_code: int, **kwargs) -> None:
        if status_code == 401:
            # RFC 7235: a 401 names the scheme to use; set here, since send_error clears earlier headers
            self.set_header("WWW-Authenticate", "jupyterhub")
        super().write_error(status_code, **kwargs)

    def cluster_or_404(self, cluster_id: str) -> ClusterRecord:
        """The service's lookup (unknown and foreign clusters look the same), in dask-gateway's words."""
        try:
            return super().cluster_or_404(cluster_id)  # type: ignore[misc]
        except APIError:
            raise APIError(404, f"Cluster {cluster_id} not found") from None

    def report(self, record: ClusterRecord, *, full: bool = True) -> dict[str, Any]:
        """A cluster as dask-gateway's ``ClusterReport._from_json`` reads it."""
        running = record.status is ClusterStatus.RUNNING
        out: dict[str, Any] = {
            "name": record.id,
            "dashboard_route": f"/clusters/{record.id}/dashboard/status" if running else None,
            "status": GATEWAY_STATUS[record.status],
            "start_time": epoch_ms(record.created),
            "stop_time": epoch_ms(record.stopped),
            "options": record.options,
        }
        if full:
            key = self.service.secrets.decrypt(record.tls_key_encrypted) if running else None
            out["tls_cert"], out["tls_key"] = (record.tls_cert, key) if running else (None, None)
        return out


class VersionHandler(GatewayAPIHandler):
    public = True

    async def get(self) -> None:
        self.write_json({"version": self.gateway.version})


class GatewayOptionsHandler(GatewayAPIHandler):
    async def get(self) -> None:
        fields = self.service.cluster_options.for_groups(self.current_user["groups"])
        specs = [spec for spec in map(option_spec, fields) if spec is not None]
        self.write_json({"cluster_options": specs})


class GatewayClustersHandler(GatewayAPIHandler, ClustersHandler):
    """``GET`` the caller's clusters by status; ``POST`` creates one (the service's own create)."""

    async def get(self) -> None:
        raw = self.get_query_argument("status", None)
        if raw is None:
            wanted = None
        else:
            names = [s.strip().upper() for s in raw.split(",") if s.strip()]
            unknown = sorted(set(names) - set(GATEWAY_STATUS.values()))
            if unknown:
                raise APIError(422, f"{unknown[0]!r} is not a valid ClusterStatus")
            wanted = set(names)
        records = sorted(self.service.store.owned_by(self.user_name), key=lambda r: r.created)
        # no filter: clusters not asked to stop (dask-gateway-server's "active": target < STOPPED)
        selected = [r for r in records if (is_active(r) if wanted is None else GATEWAY_STATUS[r.status] in wanted)]
        self.write_json({r.id: self.report(r, full=False) for r in selected})

    def json_body(self) -> dict[str, Any]:
        data = super().json_body()
        self.check_keys(data, {"cluster_options"})
        requested = data.get("cluster_options") or {}
        if not isinstance(requested, dict):
            raise APIError(422, "cluster_options must be an object")
        fields = self.service.cluster_options.for_groups(self.current_user["groups"])
        return {"options": gateway_options(fields, requested)}

    def write_json(self, data: Any, status: int = 200) -> None:
        if status == 201:  # the service's create answered its model: dask-gateway wants the name
            data = {"name": data["id"]}
        super().write_json(data, status)


class GatewayClusterHandler(GatewayAPIHandler, ClusterHandlerBase):
    async def get(self, name: str) -> None:
        record = self.cluster_or_404(name)
        wait = self.get_query_argument("wait", None)
        if wait is not None and wait in ("", "1", "true"):
            deadline = time.monotonic() + min(WAIT_SECONDS, self.service.long_poll_max)
            while record.status in (ClusterStatus.PENDING, ClusterStatus.STARTING) and (
                remaining := deadline - time.monotonic()
            ) > 0:
                await self.service.store.wait_for_change(record.id, remaining)
                record = self.service.store.get(name) or record
        self.write_json(self.report(record))

    async def delete(self, name: str) -> None:
        record = self.cluster_or_404(name)
        if record.target is ClusterTarget.RUNNING:
            who = "its owner" if record.owner == self.user_name else f"admin {self.user_name}"
            await self.service.reconciler.request_stop(record, f"stopped by {who} (dask-gateway client)")
        self.set_status(204)
        self.finish()


class GatewayScaleHandler(GatewayAPIHandler, ScaleHandler):
    """``{"count": n}`` -> the service's scale; the answer is ``{"ok", "msg"}`` (msg when clamped)."""

    def json_body(self) -> dict[str, Any]:
        count = super().json_body().get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise APIError(422, f"Scale expects a non-negative integer, got {count}")
        return {"workers": count}

    def write_json(self, data: Any, status: int = 200) -> None:
        super().write_json({"ok": not data.get("clamped"), "msg": data.get("clamped")}, status)


class GatewayAdaptHandler(GatewayAPIHandler, AdaptHandler):
    """``{"minimum", "maximum", "active"}`` -> the service's adapt (or, inactive, a fixed size)."""

    async def post(self, name: str) -> None:
        data = BaseAPIHandler.json_body(self)
        if data.get("active", True) is False:
            record = self.cluster_or_404(name)
            self.require_active(record)
            record.adapt_minimum = record.adapt_maximum = None
            await self.service.store.save(record)
            self.service.reconciler.enqueue(record.id)
            self.write_json({"ok": True, "msg": None})
            return
        await super().post(name)

    def json_body(self) -> dict[str, Any]:
        data = super().json_body()
        minimum, maximum = data.get("minimum"), data.get("maximum")
        if maximum is None:  # dask-gateway's "no upper bound": the most workers the user may ask for
            fields = {f.name: f for f in self.service.cluster_options.for_groups(self.current_user["groups"])}
            bound = fields["workers"].maximum if "workers" in fields else None
            maximum = int(bound) if bound is not None else max(minimum or 0, 1)
        return {"minimum": 0 if minimum is None else minimum, "maximum": maximum}

    def write_json(self, data: Any, status: int = 200) -> None:
        if "ok" not in data:  # the service's adapt answered its model
            data = {"ok": not data.get("clamped"), "msg": data.get("clamped")}
        super().write_json(data, status)


def gateway_api_handlers(prefix: str, service: Any, gateway: Any) -> list[tuple[str, type, dict[str, Any]]]:
    """URL specs below ``<prefix>gateway/`` (``prefix`` is the service's, with slashes)."""
    base = prefix + "gateway/api/"
    kw = {"service": service, "gateway": gateway}
    name = r"([0-9a-zA-Z_-]{1,64})"
    return [
        (base + "version", VersionHandler, kw),
        (base + "v1/options", GatewayOptionsHandler, kw),
        (base + "v1/clusters/?", GatewayClustersHandler, kw),
        (base + f"v1/clusters/{name}", GatewayClusterHandler, kw),
        (base + f"v1/clusters/{name}/scale", GatewayScaleHandler, kw),
        (base + f"v1/clusters/{name}/adapt", GatewayAdaptHandler, kw),
    ]

