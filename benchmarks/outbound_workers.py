"""What reaching a worker through the broker costs, against the same worker reached directly, same run.

Starts a dev IAM, a real JupyterHub with configurable-http-proxy and the cluster service (local
backend), creates a cluster, and joins one outbound-style worker (``python -m cmsaf_hub.reverse``)
that keeps its loopback ``tcp://`` listener beside its ``hubrev://`` one
(``CMSAF_REVERSE_KEEP_LOCAL_LISTENER=1``), so the *same* worker process is reached both ways. Then,
interleaved, from the notebook side (this process):

- gather throughput: ``get_data`` of an N MB result held on the worker (what ``client.gather``
  does), brokered (client -> CHP -> service -> CHP -> worker's outward connection) vs direct tcp;
- round-trip latency: a tiny ``get_data`` on an open connection (the per-request cost of every
  result fetch, dependency transfer and ``client.run`` hop);
- connection setup: a fresh connection each time (brokered: control-channel ticket + the
  worker's outward connection).

Targets: brokered gather >= 0.7x direct, brokered round trip <= 1.5x direct.

Run from the repository root: ``.venv/bin/python benchmarks/outbound_workers.py [--rounds 200 --mbytes 64]``;
``--quick`` (what CI runs) checks the script in seconds, its figures mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from distributed import Client  # noqa: E402
from distributed.comm import connect  # noqa: E402
from distributed.core import ConnectionPool  # noqa: E402
from distributed.worker import get_data_from_worker  # noqa: E402

from cmsaf_hub.comm import hub_connection_args, hub_security  # noqa: E402
from cmsaf_hub.reverse import KEEP_LOCAL_LISTENER_ENV, outbound_worker_command  # noqa: E402
from cluster_start import running_service_hub  # noqa: E402  (a dev IAM + hub + service, shared by benchmarks)

BROKERED, DIRECT = "brokered (hubrev://)", "direct (tcp://)"
#: Diagnostic: the peer's leg straight to the service's port (the worker's leg still through CHP).
SERVICE_PORT = "brokered, peer at service port"


def service_port(service_dir: Path) -> int:
    """The cluster service's listening port (found by its database path on the command line)."""
    import psutil

    db = str(service_dir / "service.sqlite")
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] and any(db in a for a in proc.info["cmdline"]):
            ports = [c.laddr.port for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
            if ports:
                return min(ports)
    raise RuntimeError("the cluster service's port was not found")


def local_listener(dask_worker) -> str:
    """Runs on the worker: its loopback listener's address (kept beside the hub one)."""
    return next(listener.contact_address for listener in dask_worker.listeners
                if listener.contact_address.startswith("tcp://"))


async def fetch(pool: ConnectionPool, key: str, address: str) -> int:
    response = await get_data_from_worker(pool, [key], address)
    assert response["status"] == "OK", response
    return len(response["data"][key])


async def measure(addresses: dict[str, str], token: str, big: str, small: str, *, rounds: int, repeats: int,
                  mbytes: int) -> dict[str, dict[str, float]]:
    pool = await ConnectionPool(limit=8, connection_args=hub_connection_args(token))
    try:
        results: dict[str, dict[str, list[float]]] = {p: {"gather": [], "rtt": [], "connect": []} for p in addresses}
        for _ in range(repeats):
            for path, address in addresses.items():  # interleaved: each repeat measures both paths
                await fetch(pool, small, address)  # warm the pooled connection
                t0 = time.perf_counter()
                for _ in range(rounds):
                    await fetch(pool, small, address)
                results[path]["rtt"].append((time.perf_counter() - t0) / rounds * 1000)
                t0 = time.perf_counter()
                size = await fetch(pool, big, address)
                results[path]["gather"].append(size / 2**20 / (time.perf_counter() - t0))
                assert size == mbytes * 2**20
                t0 = time.perf_counter()
                for _ in range(max(3, rounds // 20)):
                    comm = await connect(address, timeout=30, **hub_connection_args(token))
                    await comm.close()
                results[path]["connect"].append((time.perf_counter() - t0) / max(3, rounds // 20) * 1000)
        return {p: {k: statistics.median(v) for k, v in r.items()} for p, r in results.items()}
    finally:
        await pool.close()


async def main(rounds: int, repeats: int, mbytes: int) -> int:
    with tempfile.TemporaryDirectory(prefix="outbound-workers-") as tmp:
        async with running_service_hub(Path(tmp), config="c.LocalBackend.same_user = True\n") as sh:
            token = await sh.hub.create_user("alice")
            async with sh.client(token) as api:
                cid = (await api.post("clusters", json={"options": {"workers": 0}})).json()["id"]
                model = await sh.wait_status(api, cid, "running")
                join = (await api.get(f"clusters/{cid}/worker-credential")).json()
            env = {**os.environ, join["environment_variable"]: join["credential"], KEEP_LOCAL_LISTENER_ENV: "1"}
            worker = subprocess.Popen(
                outbound_worker_command(model["scheduler_address"], "--name", "bench", "--nthreads", "1",
                                        "--no-dashboard", "--memory-limit", "0"),
                env=env, stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "worker.log", "wb"),
                start_new_session=True)
            try:
                async with Client(model["scheduler_address"], security=hub_security(token), asynchronous=True,
                                  timeout=60) as client:
                    await client.wait_for_workers(1, timeout=120)
                    [brokered] = client.scheduler_info()["workers"]
                    assert brokered.startswith("hubrev://"), brokered
                    direct = (await client.run(local_listener, workers=[brokered]))[brokered]
                    big = client.submit(os.urandom, mbytes * 2**20, workers=[brokered], pure=False)
                    small = client.submit(os.urandom, 16, workers=[brokered], pure=False)
                    await asyncio.wait_for(client.gather([big, small], direct=False), 120)
                    hub = brokered.split("://", 1)[1].split("/", 1)[0]
                    at_service = brokered.replace(hub, f"127.0.0.1:{service_port(sh.service_dir)}", 1)
                    figures = await measure({BROKERED: brokered, DIRECT: direct, SERVICE_PORT: at_service}, token,
                                            big.key, small.key, rounds=rounds, repeats=repeats, mbytes=mbytes)
            finally:
                worker.send_signal(signal.SIGTERM)  # the wrapper stops the worker (killed after its grace)
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait(10)
    b, d = figures[BROKERED], figures[DIRECT]
    print(f"same worker, {repeats} interleaved repeats (medians); {mbytes} MB gathers, {rounds} round trips each")
    for path, f in figures.items():
        print(f"  {path:31s} gather {f['gather']:8.1f} MB/s   round trip {f['rtt']:6.2f} ms   "
              f"new connection {f['connect']:6.2f} ms")
    print(f"  brokered/direct: gather {b['gather'] / d['gather']:.2f}x (target >= 0.7)   "
          f"round trip {b['rtt'] / d['rtt']:.2f}x (target <= 1.5)   new connection {b['connect'] / d['connect']:.1f}x")
    s = figures[SERVICE_PORT]
    print(f"  diagnostic, peer at service port/direct: gather {s['gather'] / d['gather']:.2f}x   "
          f"round trip {s['rtt'] / d['rtt']:.2f}x")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="small round trips per repeat and path")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (each measures both paths)")
    parser.add_argument("--mbytes", type=int, default=64, help="size of the gathered result, MiB")
    parser.add_argument("--quick", action="store_true", help="one tiny pass: checks the script, not the figures")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.repeats, args.mbytes = 5, 1, 1
    os.environ.setdefault("PYTHONPATH", str(REPO))
    sys.exit(asyncio.run(main(args.rounds, args.repeats, args.mbytes)))
