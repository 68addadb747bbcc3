"""Cluster handlers: they validate, check quotas, record targets and read state; nothing else.

Quota checks and the new record's insertion happen with no ``await`` in between, which makes them
atomic on the event loop under any number of concurrent requests.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from ...comm import CREDENTIAL_ENV
from ...reverse import outbound_worker_command
from ..backends.base import BackendError
from ..crypto import CryptError, generate_cluster_tls
from ..models import ClusterRecord, ClusterStatus, ClusterTarget
from ..options import OptionsError, validate_options
from ..quotas import QuotaExceeded, Usage, check_create, clamp_workers
from .base import APIError, BaseAPIHandler

#: Keys of ``POST /clusters``; everything else is an error, not silently ignored.
CREATE_KEYS = {"options"}


def _non_negative_int(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(422, f"{name!r} must be an integer")
    if value < 0:
        raise APIError(422, f"{name!r} must not be negative")
    return value


class ClusterHandlerBase(BaseAPIHandler):
    def cluster_or_404(self, cluster_id: str) -> ClusterRecord:
        """The cluster if the caller may see it; unknown and foreign clusters look the same."""
        record = self.service.store.get(cluster_id)
        if record is None or (record.owner != self.user_name and not self.is_admin):
            raise APIError(404, f"no cluster {cluster_id!r}")
        return record

    def model(self, record: ClusterRecord, **extra: Any) -> dict[str, Any]:
        return {**self.service.cluster_model(record), **extra}

    def others_usage(self, record: ClusterRecord) -> list[Usage]:
        return [
            c.reserved_usage() for c in self.service.store.limited_owned_by(record.owner) if c.id != record.id
        ]

    def require_active(self, record: ClusterRecord) -> None:
        if not record.status.active or record.target is not ClusterTarget.RUNNING:
            raise APIError(409, f"cluster {record.id} is {record.status.value}; it cannot be changed")


class ClustersHandler(ClusterHandlerBase):
    async def get(self) -> None:
        every = self.get_query_argument("all", "false").lower() in ("1", "true", "yes")
        if every and not self.is_admin:
            raise APIError(403, "only hub admins may list every user's clusters")
        store = self.service.store
        records = store.clusters.values() if every else store.owned_by(self.user_name)
        ordered = sorted(records, key=lambda r: r.created)
        self.finish("[" + ",".join(self.service.cluster_json(r) for r in ordered) + "]")

    async def post(self) -> None:
        data = self.json_body()
        self.check_keys(data, CREATE_KEYS)
        fields = self.service.cluster_options.for_groups(self.current_user["groups"])
        try:
            options = validate_options(fields, data.get("options"))
        except OptionsError as e:
            raise APIError(422, str(e))
        record = ClusterRecord(
            id=secrets.token_hex(16),
            owner=self.user_name,
            options=options,
            created=time.time(),
            worker_target=int(options.get("workers") or 0),
        )
        store = self.service.store
        # -- atomic section: check and reserve without awaiting ---------------------------------
        try:
            check_create(
                self.service.limits, record.reserved_usage(), [c.reserved_usage() for c in store.limited_owned_by(record.owner)]
            )
        except QuotaExceeded as e:
            self.service.metrics.quota_rejections.inc()
            raise APIError(409, str(e))
        store.clusters[record.id] = record
        # -- end of atomic section ---------------------------------------------------------------
        try:
            tls = await asyncio.get_running_loop().run_in_executor(None, generate_cluster_tls, record.id)
            record.tls_cert = tls.cert
            record.tls_key_encrypted = self.service.secrets.encrypt(tls.key)
            await store.add(record)
        except BaseException:
            store.clusters.pop(record.id, None)
            raise
        self.log.info("Cluster %s created for %s with %s", record.id, record.owner, options)
        self.service.reconciler.enqueue(record.id)
        self.write_json(self.model(record), status=201)


class ClusterHandler(ClusterHandlerBase):
    async def get(self, cluster_id: str) -> None:
        record = self.cluster_or_404(cluster_id)
        wait = self.query_float("wait")
        known = self.get_query_argument("status", None)
        if wait:
            deadline = time.monotonic() + min(wait, self.service.long_poll_max)
            known = known or record.status.value
            while record.status.value == known and (remaining := deadline - time.monotonic()) > 0:
                await self.service.store.wait_for_change(record.id, remaining)
                record = self.service.store.get(cluster_id) or record
        self.write_json(self.model(record))

    async def delete(self, cluster_id: str) -> None:
        record = self.cluster_or_404(cluster_id)
        who = "its owner" if record.owner == self.user_name else f"admin {self.user_name}"
        await self.service.reconciler.request_stop(record, f"stopped by {who}")
        self.write_json(self.model(record))


class ScaleHandler(ClusterHandlerBase):
    async def post(self, cluster_id: str) -> None:
        record = self.cluster_or_404(cluster_id)
        data = self.json_body()
        self.check_keys(data, {"workers"})
        workers = _non_negative_int(data, "workers")
        self.require_active(record)
        usage = record.reserved_usage()
        clamped = clamp_workers(self.service.limits, Usage(workers, usage.cores, usage.memory), self.others_usage(record))
        record.worker_target = clamped.value
        record.adapt_minimum = record.adapt_maximum = None
        await self.service.store.save(record)
        self.service.reconciler.enqueue(record.id)
        self.write_json(self.model(record, clamped=clamped.reason))


class AdaptHandler(ClusterHandlerBase):
    async def post(self, cluster_id: str) -> None:
        record = self.cluster_or_404(cluster_id)
        data = self.json_body()
        self.check_keys(data, {"minimum", "maximum"})
        minimum = _non_negative_int(data, "minimum") if "minimum" in data else 0
        maximum = _non_negative_int(data, "maximum") if "maximum" in data else max(minimum, record.worker_target)
        if minimum > maximum:
            raise APIError(422, "'minimum' must not exceed 'maximum'")
        self.require_active(record)
        usage = record.reserved_usage()
        clamped = clamp_workers(self.service.limits, Usage(maximum, usage.cores, usage.memory), self.others_usage(record))
        record.adapt_maximum = clamped.value
        record.adapt_minimum = min(minimum, clamped.value)
        record.worker_target = max(record.adapt_minimum, min(record.adapt_maximum, record.worker_target))
        await self.service.store.save(record)
        self.service.reconciler.enqueue(record.id)
        self.write_json(self.model(record, clamped=clamped.reason))


class LogsHandler(ClusterHandlerBase):
    async def get(self, cluster_id: str) -> None:
        record = self.cluster_or_404(cluster_id)
        if record.status is ClusterStatus.PENDING:
            self.write_json({})
            return
        try:
            logs = await self.service.backend.logs(await self.service.reconciler.spec(record))
        except (BackendError, CryptError) as e:
            raise APIError(502, f"cannot fetch the logs: {e}")
        self.write_json(logs)


class WorkerCredentialHandler(ClusterHandlerBase):
    """How to start a worker anywhere that joins this cluster through the hub's public URL, as a
    brokered worker (``python -m cmsaf_hub.reverse``) that its peers reach through the service.

    For the owner only (not even admins: a cluster's credential never reaches another user). The
    credential goes in the worker's environment, never on its command line.
    """

    async def get(self, cluster_id: str) -> None:
        record = self.cluster_or_404(cluster_id)
        if record.owner != self.user_name:
            raise APIError(404, f"no cluster {cluster_id!r}")
        model = self.service.cluster_model(record)
        if not model["scheduler_address"]:
            raise APIError(409, f"cluster {record.id} is {record.status.value}: it has no scheduler to join")
        self.write_json({
            "scheduler_address": model["scheduler_address"],
            "credential": self.service.worker_credential(record.id),
            "environment_variable": CREDENTIAL_ENV,
            # a brokered worker: the scheduler, clients and other workers reach it through the service
            "command": outbound_worker_command(model["scheduler_address"], python="python"),
            # where outbound-only workers open their brokered connections (CMSAF_BROKER_URL), if not through the hub
            "broker_url": self.service.broker.public_url or None,
        })
