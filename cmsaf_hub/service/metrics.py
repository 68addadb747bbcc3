"""Prometheus metrics of the service: request latency, quota rejections, clusters and workers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .models import ClusterStatus, WorkerStatus


class _StoreCollector:
    """Cluster and worker counts computed from the store at scrape time (no state to keep in sync)."""

    def __init__(self):
        self.store = None

    def collect(self):
        clusters = GaugeMetricFamily("cmsaf_clusters", "Clusters by status", labels=["status"])
        workers = GaugeMetricFamily("cmsaf_workers", "Workers of active clusters by status", labels=["status"])
        cluster_counts = {s.value: 0 for s in ClusterStatus}
        worker_counts = {s.value: 0 for s in WorkerStatus}
        if self.store is not None:
            for record in self.store.clusters.values():
                cluster_counts[record.status.value] += 1
                for w in record.workers.values():
                    worker_counts[w.status.value] += 1
        for status, n in cluster_counts.items():
            clusters.add_metric([status], n)
        for status, n in worker_counts.items():
            workers.add_metric([status], n)
        yield clusters
        yield workers


class ServiceMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "cmsaf_request_duration_seconds",
            "API request duration",
            ["method", "handler", "code"],
            registry=self.registry,
        )
        self.quota_rejections = Counter(
            "cmsaf_quota_rejections", "Cluster creations refused by a limit", registry=self.registry
        )
        self._store_collector = _StoreCollector()
        self.registry.register(self._store_collector)

    def observe_request(self, method: str, handler: str, code: int, seconds: float) -> None:
        self.requests.labels(method, handler, str(code)).observe(seconds)

    def render(self, store) -> bytes:
        self._store_collector.store = store
        return generate_latest(self.registry)
