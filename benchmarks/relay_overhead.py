"""What the hub relay costs a Dask client, against a direct ``tcp://`` connection in the same run.

Starts, as separate processes: a scheduler (tcp + ws listeners, prefixed dashboard) and one worker;
a real JupyterHub with configurable-http-proxy; and the forwarder mounted in a small tornado service
registered with that hub. Then measures, for each path:

- round-trip latency: 1,000 sequential tiny ``client.submit`` + ``result``;
- bulk throughput: ``scatter`` and ``gather`` of 100 MB (client <-> scheduler <-> worker).

Paths: ``direct tcp://`` (the peer), ``direct ws://`` (the scheduler's ws listener: what Dask's
websocket comm itself costs), ``relay`` (the service's port, no proxy) and ``hub``
(``ws://<hub>/services/cmsaf/clusters/<id>/comm`` through CHP). Targets: hub latency <= 1.3x
direct, hub throughput >= 0.7x direct.

Run from the repository root: ``.venv/bin/python benchmarks/relay_overhead.py [--rounds 1000 --mbytes 100]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SERVICE_PREFIX = "/services/cmsaf/"
CLUSTER_ID = "bench"


def run_scheduler() -> None:
    """Child process: a scheduler with tcp and ws listeners; prints its addresses as one JSON line."""
    from distributed import Scheduler

    from cmsaf_hub.service.forwarder import dashboard_prefix

    async def main() -> None:
        scheduler = Scheduler(
            protocol=["tcp", "ws"], port=[0, 0], host="127.0.0.1", dashboard_address="127.0.0.1:0",
            http_prefix=dashboard_prefix(SERVICE_PREFIX, CLUSTER_ID),
        )
        await scheduler
        ws_port = next(li.get_host_port()[1] for li in scheduler.listeners if li.prefix == "ws://")
        print(json.dumps({"tcp": scheduler.address, "ws": f"ws://127.0.0.1:{ws_port}",
                          "dashboard": f"http://127.0.0.1:{scheduler.http_server.port}"}), flush=True)
        await scheduler.finished()

    asyncio.run(main())


def run_service() -> None:
    """Child process: the forwarder in a tornado app, as the cluster service would mount it."""
    from jupyterhub.services.auth import HubOAuth
    from tornado import web

    from cmsaf_hub.service.forwarder import ClusterState, Target, forwarder_handlers

    cfg = json.loads(os.environ.pop("BENCH_SERVICE"))
    target = Target(CLUSTER_ID, cfg["owner"], ClusterState.RUNNING, cfg["ws"], cfg["dashboard"])

    async def resolve(cluster_id: str) -> Target | None:
        return target if cluster_id == CLUSTER_ID else None

    async def main() -> None:
        hub_auth = HubOAuth(api_token=cfg["token"], api_url=cfg["api_url"], oauth_client_id="service-cmsaf",
                            base_url=SERVICE_PREFIX, hub_prefix="/hub/",
                            access_scopes={"access:services!service=cmsaf"})
        app = web.Application(forwarder_handlers(SERVICE_PREFIX, resolve, hub_auth))
        app.listen(cfg["port"], "127.0.0.1")
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def inc(x: int) -> int:
    return x + 1


async def measure(address: str, security, rounds: int, nbytes: int) -> dict[str, float]:
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
        start = time.perf_counter()
        [future] = await client.scatter([payload])
        scatter_s = time.perf_counter() - start
        start = time.perf_counter()
        back = await client.gather(future)
        gather_s = time.perf_counter() - start
        assert len(back) == nbytes
        del future, back
    mb = nbytes / 1e6
    return {"latency_ms": latency_ms, "scatter_MBps": mb / scatter_s, "gather_MBps": mb / gather_s}


async def service_under_load(url: str, token: str, comm_address: str, nbytes: int) -> dict[str, float]:
    """Median time of a proxied dashboard request, idle vs while bulk data streams through the relay."""
    import httpx

    from cmsaf_hub.comm import hub_security
    from distributed import Client

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
            for _ in range(3):
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
    import httpx

    from cmsaf_hub.comm import hub_security
    from devstack.minihub import MiniHub

    children: list[asyncio.subprocess.Process] = []
    py = sys.executable
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

            env = {**os.environ, "BENCH_SERVICE": json.dumps({
                "port": hub.service_port, "api_url": hub.api_url, "token": hub.service_token, "owner": "alice",
                "ws": addresses["ws"], "dashboard": addresses["dashboard"]})}
            service = await asyncio.create_subprocess_exec(py, __file__, "--service", env=env,
                                                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            children.append(service)
            await read_line(service)
            await hub.start()
            token = await hub.user_token("alice")

            paths = {
                "direct tcp://": (addresses["tcp"], None),
                "direct ws:// (no hub)": (addresses["ws"], hub_security("unused")),
                "relay (service port)": (f"ws://127.0.0.1:{hub.service_port}{SERVICE_PREFIX}clusters/{CLUSTER_ID}/comm",
                                         hub_security(token)),
                "hub (CHP + relay)": (f"ws://127.0.0.1:{hub.port}{SERVICE_PREFIX}clusters/{CLUSTER_ID}/comm",
                                      hub_security(token)),
            }
            results: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
            for _ in range(repeats):  # interleave the paths so machine load hits all of them alike
                for name, (address, security) in paths.items():
                    results[name].append(await measure(address, security, rounds, mbytes * 1_000_000))
            service_latency = await service_under_load(
                f"{hub.url}{SERVICE_PREFIX}clusters/{CLUSTER_ID}/dashboard/info/main/workers.html", token,
                paths["hub (CHP + relay)"][0], mbytes * 1_000_000)
        finally:
            await hub.stop()
            for child in children:
                if child.returncode is None:
                    child.terminate()
                    await child.wait()

    median = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in results.items()}
    direct = median["direct tcp://"]
    print(f"relay overhead: {rounds} sequential submit+result, scatter/gather {mbytes} MB, "
          f"median of {repeats} interleaved repeats, {os.cpu_count()} CPUs")
    print(f"{'path':<22} {'latency ms':>11} {'x direct':>9} {'scatter MB/s':>13} {'x direct':>9} "
          f"{'gather MB/s':>12} {'x direct':>9}")
    for name, m in median.items():
        print(f"{name:<22} {m['latency_ms']:>11.2f} {m['latency_ms'] / direct['latency_ms']:>9.2f} "
              f"{m['scatter_MBps']:>13.1f} {m['scatter_MBps'] / direct['scatter_MBps']:>9.2f} "
              f"{m['gather_MBps']:>12.1f} {m['gather_MBps'] / direct['gather_MBps']:>9.2f}")
    hub_m = median["hub (CHP + relay)"]
    lat = hub_m["latency_ms"] / direct["latency_ms"]
    thr = min(hub_m["scatter_MBps"] / direct["scatter_MBps"], hub_m["gather_MBps"] / direct["gather_MBps"])
    print(f"service responsiveness: proxied dashboard request {service_latency['idle_ms']:.1f} ms idle, "
          f"{service_latency['busy_ms']:.1f} ms while {mbytes} MB scatter/gather x3 stream through the relay "
          f"({service_latency['busy_ms'] / service_latency['idle_ms']:.2f}x, {service_latency['busy_n']} requests)")
    print(f"targets (hub vs direct): latency {lat:.2f}x (<= 1.3: {'met' if lat <= 1.3 else 'MISSED'}), "
          f"throughput {thr:.2f}x (>= 0.7: {'met' if thr >= 0.7 else 'MISSED'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--mbytes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scheduler", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--service", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scheduler:
        run_scheduler()
    elif args.service:
        run_service()
    else:
        asyncio.run(bench(args.rounds, args.mbytes, args.repeats))


if __name__ == "__main__":
    main()
