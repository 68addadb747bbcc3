"""What the hub's ways into a cluster cost a Dask client, against direct ``tcp://`` in the same run.

Starts, as separate processes: a scheduler (tcp, tls and ws listeners, prefixed dashboard) and one
worker; a real JupyterHub with configurable-http-proxy; and the forwarder mounted in a small tornado
service registered with that hub. Then measures, interleaved, for each path:

- round-trip latency: sequential tiny ``client.submit`` + ``result``;
- bulk throughput: ``scatter`` and ``gather`` of N MB (client <-> scheduler <-> worker);
- for paths through the service/proxy: their CPU seconds per relayed GB (from /proc, bulk only).

Paths: ``direct tcp://`` (the peer), ``direct tls://`` (Dask's TLS comm, no hub), ``direct ws://``
(Dask's websocket comm, no hub), ``ws relay via hub`` (``ws://<hub>/.../comm`` through CHP, for plain
distributed), ``fast path, service port`` and ``fast path via hub`` (``hub://<hub>/.../tls``: Dask's
TLS comm spliced through CHP and the service), and ``dask-gateway client`` (``gateway://``: the
real dask-gateway client's TLS through the service's SNI passthrough, no hub URL). Then the
service's responsiveness: a proxied dashboard request, idle and while bulk data streams over the
fast path.

Targets (fast path via hub vs direct tcp://): latency <= 1.1x, scatter and gather >= 0.8x, dashboard
request while busy <= 2x idle.

Run from the repository root: ``.venv/bin/python benchmarks/relay_overhead.py [--rounds 1000 --mbytes 100]``;
``--quick`` checks the script in seconds (CI), its figures mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SERVICE_PREFIX = "/services/cmsaf/"
CLUSTER_ID = "bench"
#: Paths measured against the direct tcp:// peer, in the order they are printed.
FAST_HUB = "fast path via hub"
WS_HUB = "ws relay via hub"
GATEWAY = "dask-gateway client"


def run_scheduler() -> None:
    """Child process: a scheduler with tcp, tls and ws listeners; prints addresses and its TLS PEM."""
    from distributed import Scheduler
    from distributed.security import Security

    from cmsaf_hub.service.crypto import generate_cluster_tls
    from cmsaf_hub.service.forwarder import dashboard_prefix

    tls = generate_cluster_tls(CLUSTER_ID)

    async def main() -> None:
        security = Security(tls_ca_file=tls.cert, tls_scheduler_cert=tls.cert, tls_scheduler_key=tls.key,
                            require_encryption=False)
        scheduler = Scheduler(
            protocol=["tcp", "tls", "ws"], port=[0, 0, 0], host="127.0.0.1", dashboard_address="127.0.0.1:0",
            http_prefix=dashboard_prefix(SERVICE_PREFIX, CLUSTER_ID), security=security,
        )
        await scheduler
        by_prefix = {li.prefix: li for li in scheduler.listeners}
        print(json.dumps({
            "tcp": by_prefix["tcp://"].contact_address, "tls": by_prefix["tls://"].contact_address,
            "ws": f"ws://127.0.0.1:{by_prefix['ws://'].get_host_port()[1]}",
            "dashboard": f"http://127.0.0.1:{scheduler.http_server.port}", "cert": tls.cert, "key": tls.key,
        }), flush=True)
        await scheduler.finished()

    asyncio.run(main())


def run_service() -> None:
    """Child process: the forwarder in a tornado app, as the cluster service would mount it."""
    from jupyterhub.services.auth import HubOAuth
    from tornado import web

    from cmsaf_hub.service.forwarder import ClusterState, Target, forwarder_handlers
    from cmsaf_hub.service.gateway import SNIPassthrough

    cfg = json.loads(os.environ.pop("BENCH_SERVICE"))
    target = Target(CLUSTER_ID, cfg["owner"], ClusterState.RUNNING, cfg["ws"], cfg["dashboard"],
                    scheduler_tls_address=cfg["tls"], tls_pem=(cfg["cert"], cfg["key"]))

    async def resolve(cluster_id: str) -> Target | None:
        return target if cluster_id == CLUSTER_ID else None

    async def main() -> None:
        hub_auth = HubOAuth(api_token=cfg["token"], api_url=cfg["api_url"], oauth_client_id="service-cmsaf",
                            base_url=SERVICE_PREFIX, hub_prefix="/hub/",
                            access_scopes={"access:services!service=cmsaf"})
        app = web.Application(forwarder_handlers(SERVICE_PREFIX, resolve, hub_auth))
        app.listen(cfg["port"], "127.0.0.1")

        async def scheduler_of(name: str) -> str | None:
            return cfg["tls"] if name == CLUSTER_ID else None

        SNIPassthrough(scheduler_of, log=logging.getLogger("gateway-proxy")).listen(cfg["gateway_port"], "127.0.0.1")
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def inc(x: int) -> int:
    return x + 1


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(address: str, security, rounds: int, nbytes: int,
                  cpu: Callable[[], dict[str, float]]) -> dict[str, float]:
    from distributed import Client

    async with Client(address, security=security, asynchronous=True) as client:
        await client.wait_for_workers(1)
        for i in range(20):  # warm up connections and the task path
            await client.submit(inc, i, pure=False)
        start = time.perf_counter()
        for i in range(rounds):
            await client.submit(inc, i, pure=False)
        latency_ms = (time.perf_counter() - start) / rounds * 1e3

        payload = os.urandom(nbytes)
        cpu_before = cpu()
        start = time.perf_counter()
        [future] = await client.scatter([payload])
        scatter_s = time.perf_counter() - start
        start = time.perf_counter()
        back = await client.gather(future)
        gather_s = time.perf_counter() - start
        cpu_after = cpu()
        assert back == payload
        del future, back
    mb, gb = nbytes / 1e6, 2 * nbytes / 1e9
    result = {"latency_ms": latency_ms, "scatter_MBps": mb / scatter_s, "gather_MBps": mb / gather_s}
    result.update({f"{k}_cpu_s_per_GB": (cpu_after[k] - cpu_before[k]) / gb for k in cpu_after})
    return result


async def service_under_load(url: str, token: str, comm_address: str, nbytes: int, transfers: int) -> dict[str, float]:
    """Median time of a proxied dashboard request, idle vs while bulk data streams over the fast path."""
    import httpx
    from distributed import Client

    from cmsaf_hub.comm import hub_security

    async def probe(http: httpx.AsyncClient, n: int) -> list[float]:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            r = await http.get(url, headers={"Authorization": f"token {token}"})
            assert r.status_code == 200, r.status_code
            times.append((time.perf_counter() - start) * 1e3)
        return times

    async with httpx.AsyncClient(timeout=60) as http, \
            Client(comm_address, security=hub_security(token), asynchronous=True) as client:
        idle = await probe(http, 20)
        busy: list[float] = []

        async def bulk() -> None:
            for _ in range(transfers):
                [future] = await client.scatter([os.urandom(nbytes)])
                await client.gather(future)
                del future

        transfer = asyncio.ensure_future(bulk())
        while not transfer.done():
            busy += await probe(http, 1)
        await transfer
    return {"idle_ms": statistics.median(idle), "busy_ms": statistics.median(busy), "busy_n": len(busy)}


async def read_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    if not line:
        raise RuntimeError("child process exited early")
    return line.decode().strip()


async def bench(rounds: int, mbytes: int, repeats: int) -> None:
    from dask_gateway.client import GatewaySecurity

    from cmsaf_hub.comm import hub_security
    from cmsaf_hub.service.probe import client_security
    from devstack.hub import free_port
    from devstack.minihub import MiniHub

    children: list[asyncio.subprocess.Process] = []
    py = sys.executable
    nbytes = mbytes * 1_000_000
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        hub = MiniHub(Path(tmp))
        try:
            sched = await asyncio.create_subprocess_exec(py, __file__, "--scheduler", stdout=subprocess.PIPE,
                                                         stderr=subprocess.DEVNULL)
            children.append(sched)
            addresses = json.loads(await read_line(sched))
            worker = await asyncio.create_subprocess_exec(
                py, "-m", "distributed.cli.dask_worker", addresses["tcp"], "--nthreads", "1", "--no-dashboard",
                "--no-nanny", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            children.append(worker)

            gateway_port = free_port()
            env = {**os.environ, "BENCH_SERVICE": json.dumps({
                "port": hub.service_port, "gateway_port": gateway_port, "api_url": hub.api_url, "token": hub.service_token, "owner": "alice",
                **{k: addresses[k] for k in ("ws", "tls", "dashboard", "cert", "key")}})}
            service = await asyncio.create_subprocess_exec(py, __file__, "--service", env=env,
                                                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            children.append(service)
            await read_line(service)
            await hub.start()
            token = await hub.user_token("alice")
            proxy_pid = hub.proxy_pid()

            def relay_cpu() -> dict[str, float]:
                return {"service": cpu_seconds(service.pid), "proxy": cpu_seconds(proxy_pid)}

            def no_cpu() -> dict[str, float]:
                return {}

            def service_cpu() -> dict[str, float]:
                return {"service": cpu_seconds(service.pid)}

            hub_base = f"127.0.0.1:{hub.port}{SERVICE_PREFIX}clusters/{CLUSTER_ID}"
            service_base = f"127.0.0.1:{hub.service_port}{SERVICE_PREFIX}clusters/{CLUSTER_ID}"
            paths = {
                "direct tcp://": (addresses["tcp"], None, no_cpu),
                "direct tls://": (addresses["tls"], client_security(addresses["cert"], addresses["key"]), no_cpu),
                "direct ws:// (no hub)": (addresses["ws"], hub_security("unused"), no_cpu),
                WS_HUB: (f"ws://{hub_base}/comm", hub_security(token), relay_cpu),
                "fast path, service port": (f"hub://{service_base}/tls", hub_security(token), relay_cpu),
                FAST_HUB: (f"hub://{hub_base}/tls", hub_security(token), relay_cpu),
                GATEWAY: (f"gateway://127.0.0.1:{gateway_port}/{CLUSTER_ID}",
                          GatewaySecurity(tls_key=addresses["key"], tls_cert=addresses["cert"]), service_cpu),
            }
            results: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
            for _ in range(repeats):  # interleave the paths so machine load hits all of them alike
                for name, (address, security, cpu) in paths.items():
                    results[name].append(await measure(address, security, rounds, nbytes, cpu))
            service_latency = await service_under_load(
                f"{hub.url}{SERVICE_PREFIX}clusters/{CLUSTER_ID}/dashboard/info/main/workers.html", token,
                paths[FAST_HUB][0], nbytes, transfers=3)
        finally:
            await hub.stop()
            for child in children:
                if child.returncode is None:
                    child.terminate()
                    await child.wait()

    median = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in results.items()}
    report(median, service_latency, rounds=rounds, mbytes=mbytes, repeats=repeats)


def report(median: dict[str, dict[str, float]], service_latency: dict[str, float], *, rounds: int, mbytes: int,
           repeats: int) -> None:
    direct = median["direct tcp://"]
    print(f"relay overhead: {rounds} sequential submit+result, scatter/gather {mbytes} MB, "
          f"median of {repeats} interleaved repeats, {os.cpu_count()} CPUs")
    print(f"{'path':<24} {'latency ms':>10} {'x tcp':>6} {'scatter MB/s':>12} {'x tcp':>6} "
          f"{'gather MB/s':>11} {'x tcp':>6} {'service CPU s/GB':>16} {'proxy CPU s/GB':>14}")
    for name, m in median.items():
        service_cpu = f"{m['service_cpu_s_per_GB']:.2f}" if "service_cpu_s_per_GB" in m else "-"
        proxy_cpu = f"{m['proxy_cpu_s_per_GB']:.2f}" if "proxy_cpu_s_per_GB" in m else "-"
        print(f"{name:<24} {m['latency_ms']:>10.2f} {m['latency_ms'] / direct['latency_ms']:>6.2f} "
              f"{m['scatter_MBps']:>12.1f} {m['scatter_MBps'] / direct['scatter_MBps']:>6.2f} "
              f"{m['gather_MBps']:>11.1f} {m['gather_MBps'] / direct['gather_MBps']:>6.2f} "
              f"{service_cpu:>16} {proxy_cpu:>14}")
    fast = median[FAST_HUB]
    lat = fast["latency_ms"] / direct["latency_ms"]
    scatter = fast["scatter_MBps"] / direct["scatter_MBps"]
    gather = fast["gather_MBps"] / direct["gather_MBps"]
    busy = service_latency["busy_ms"] / service_latency["idle_ms"]
    print(f"service responsiveness: proxied dashboard request {service_latency['idle_ms']:.1f} ms idle, "
          f"{service_latency['busy_ms']:.1f} ms while {mbytes} MB scatter/gather x3 stream over the fast path "
          f"({busy:.2f}x, {service_latency['busy_n']} requests)")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(f"targets ({FAST_HUB} vs direct tcp://): latency {lat:.2f}x (<= 1.1: {verdict(lat <= 1.1)}), "
          f"scatter {scatter:.2f}x and gather {gather:.2f}x (>= 0.8: {verdict(min(scatter, gather) >= 0.8)}), "
          f"dashboard while busy {busy:.2f}x idle (<= 2: {verdict(busy <= 2)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--mbytes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a few rounds and MB, one repeat: checks the script")
    parser.add_argument("--scheduler", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--service", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scheduler:
        run_scheduler()
    elif args.service:
        run_service()
    elif args.quick:
        asyncio.run(bench(rounds=20, mbytes=2, repeats=1))
    else:
        asyncio.run(bench(args.rounds, args.mbytes, args.repeats))


if __name__ == "__main__":
    main()
