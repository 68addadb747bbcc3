"""A backend that runs nothing: for measuring the service itself (benchmarks, API fuzzing).

Kept out of the package on purpose. Every cluster "starts" at once and every worker "runs"; state
lives only in the service's database, like a real backend's resources would.
"""

from __future__ import annotations

import asyncio
import secrets

from traitlets import Float

from cmsaf_hub.service.backends.base import (
    Backend,
    ClusterObservation,
    ClusterSpec,
    SchedulerInfo,
    SubmittedWorker,
    WorkerObservation,
    WorkerPhase,
)


class NoopBackend(Backend):
    stop_cluster_seconds = Float(
        0, help="How long stopping a cluster takes, as removing a real one's jobs does (tests of the meantime)."
    ).tag(config=True)

    async def start_scheduler(self, cluster: ClusterSpec) -> SchedulerInfo:
        return SchedulerInfo(address="tls://192.0.2.1:8786", dashboard_address="http://192.0.2.1:8787",
                             backend_state={"noop": True})

    async def submit_workers(self, cluster: ClusterSpec, count: int) -> list[SubmittedWorker]:
        return [SubmittedWorker(f"{cluster.id[:8]}-{secrets.token_hex(4)}") for _ in range(count)]

    async def stop_workers(self, cluster, workers) -> None:
        return None

    async def poll(self, clusters: list[ClusterSpec]) -> dict[str, ClusterObservation]:
        return {
            c.id: ClusterObservation(
                scheduler_alive=True,
                workers={n: WorkerObservation(n, WorkerPhase.RUNNING) for n in c.backend_state.get("workers", {})},
            )
            for c in clusters
        }

    async def stop_cluster(self, cluster: ClusterSpec) -> None:
        await asyncio.sleep(self.stop_cluster_seconds)

    async def logs(self, cluster: ClusterSpec) -> dict[str, str]:
        return {"scheduler": "noop backend: nothing runs\n"}

    async def list_cluster_ids(self) -> set[str]:
        return set()

    async def remove_cluster_resources(self, cluster_id: str) -> None:
        return None
