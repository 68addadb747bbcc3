"""The service tracking 1,000 clusters (no-op backend): GET /clusters latency and RSS per cluster.

Runs the service under a real hub and asks through the hub's proxy like a user. Peers measured in
the same run: GET /health through the same proxy (the floor: proxy + tornado, no auth, no data) and
GET /clusters while the user holds 10 clusters. Targets: p50 < 20 ms, < 50 KB RSS per cluster.

    .venv/bin/python benchmarks/service_scale.py [--clusters 1000] [--requests 200] [--quick]

``--quick`` (what CI runs): 20 clusters, 20 requests; it checks the script, not the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cluster_start import running_service_hub  # noqa: E402

CONFIG = """
c.Limits.max_clusters_per_user = 0
c.Limits.max_cores_per_user = 0
c.Limits.max_memory_per_user = 0
c.Reconciler.poll_interval = 5
"""


def service_process(sh) -> psutil.Process:
    db = str(sh.service_dir / "service.sqlite")
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "cmsaf_hub" in cmd and any(db in a for a in cmd):
            return p
    raise RuntimeError("service process not found")


def service_rss(sh) -> int:
    return service_process(sh).memory_info().rss


def service_direct_url(sh) -> str:
    """The service's own listening address (bypassing the hub's proxy)."""
    [port] = {c.laddr.port for c in service_process(sh).net_connections("tcp") if c.status == "LISTEN"}
    return f"http://127.0.0.1:{port}/services/cmsaf/api/v1/"


async def latencies(client, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await client.get(path)
        r.raise_for_status()
        out.append(time.perf_counter() - t0)
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def create(client, n: int) -> None:
    for start in range(0, n, 50):
        rs = await asyncio.gather(*[client.post("clusters", json={"options": {"workers": 1}})
                                    for _ in range(min(50, n - start))])
        for r in rs:
            r.raise_for_status()


async def main(n_clusters: int, n_requests: int) -> None:
    with tempfile.TemporaryDirectory(prefix="service-scale-") as tmp:
        async with running_service_hub(Path(tmp), backend="benchmarks.noop_backend.NoopBackend",
                                       config=CONFIG) as sh:
            token = await sh.hub.create_user("alice")
            async with sh.client(token) as client:
                await latencies(client, "clusters", 20)  # warm up (auth cache, connections)
                health = await latencies(client, "health", n_requests)
                await create(client, 10)
                small = await latencies(client, "clusters", n_requests)
                await asyncio.sleep(2)
                rss_before = service_rss(sh)
                t0 = time.perf_counter()
                await create(client, n_clusters - 10)
                created_in = time.perf_counter() - t0
                while sum(c["workers"]["running"] for c in (await client.get("clusters")).json()) < n_clusters:
                    await asyncio.sleep(1)
                rss_after = service_rss(sh)
                big = await latencies(client, "clusters", n_requests)
                body = len((await client.get("clusters")).content)
                direct_client = httpx.AsyncClient(base_url=service_direct_url(sh), headers=client.headers)
                async with direct_client:
                    direct = await latencies(direct_client, "clusters", n_requests)
    per_cluster = (rss_after - rss_before) / (n_clusters - 10)
    ms = lambda v: f"{1000 * v:.1f} ms"  # noqa: E731
    print(f"created {n_clusters - 10} clusters (1 worker each) in {created_in:.1f} s "
          f"({(n_clusters - 10) / created_in:.0f}/s)")
    print(f"GET /health (floor)        p50 {ms(statistics.median(health))}  p99 {ms(pct(health, 0.99))}")
    print(f"GET /clusters, 10 held     p50 {ms(statistics.median(small))}  p99 {ms(pct(small, 0.99))}")
    print(f"GET /clusters, {n_clusters} held p50 {ms(statistics.median(big))}  p99 {ms(pct(big, 0.99))}  "
          f"({body / 1024:.0f} KiB body)")
    print(f"GET /clusters, {n_clusters} held, service port directly (no proxy) p50 "
          f"{ms(statistics.median(direct))}  p99 {ms(pct(direct, 0.99))}")
    print(f"  ratio p50 vs target 20 ms: {statistics.median(big) / 0.020:.2f} (target < 1.0); "
          f"vs 10 clusters: {statistics.median(big) / statistics.median(small):.1f}x; "
          f"vs /health floor: {statistics.median(big) / statistics.median(health):.1f}x")
    print(f"service RSS {rss_before / 2**20:.1f} MiB -> {rss_after / 2**20:.1f} MiB: "
          f"{per_cluster / 1024:.1f} KiB per cluster; ratio vs target 50 KB: {per_cluster / 50_000:.2f} (target < 1.0)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="20 clusters, 20 requests: checks the script")
    args = parser.parse_args()
    if args.quick:
        args.clusters, args.requests = 20, 20
    asyncio.run(main(args.clusters, args.requests))
