"""What reaching a worker through the broker costs, against the same worker reached directly, same run.

Starts a dev IAM, a real JupyterHub with configurable-http-proxy, the cluster service (local
backend, with the broker's own listener: ``Broker.listen``) and a real nginx in front of the hub as
its ingress (the hub's public address), which routes the broker's paths to that listener
(``devstack/ingress.py``, as ``deploy/manifests/hub-ingress.yaml``). It creates a cluster and joins
three outbound-style workers (``python -m cmsaf_hub.reverse``): one told the hub's public address
(the ingress) as ``CMSAF_BROKER_URL``, one told a separate broker address (the listener itself),
one through the hub's proxy only. Each keeps its loopback ``tcp://`` listener beside its
``hubrev://`` one (``CMSAF_REVERSE_KEEP_LOCAL_LISTENER=1``), so the *same* worker process is reached
both ways. Then, interleaved, from the notebook side (this process):

- gather throughput: ``get_data`` of an N MB result held on the worker (what ``client.gather``
  does) through the ingress (client -> nginx -> service -> nginx -> worker's outward connection),
  through the broker's listener (client -> service -> worker), through the hub's proxy (client ->
  CHP -> service -> CHP -> worker), and direct tcp;
- round-trip latency: a tiny ``get_data`` on an open connection (the per-request cost of every
  result fetch, dependency transfer and ``client.run`` hop);
- connection setup: a fresh connection each time (brokered: control-channel ticket + the
  worker's outward connection).

The floor, measured in the same run: the ingress worker's loopback listener reached through 1, 2
and 3 *ideal* relay hops (``devstack/ideal_relay.py``: ``splice(2)`` in blocking threads, no event
loop, no byte in user space). A brokered path crosses relays (the ingress path three: nginx, the
broker, nginx; the broker's listener one; the hub's proxy path three: CHP, the broker, CHP), and no
relay hop costs less than an ideal one, so each brokered figure is also printed against the floor
of its hop count: about 1.0x there means the path costs what its hops must, whatever the code.

Targets: brokered gather >= 0.7x direct, brokered round trip <= 1.5x direct, judged on the path
through the hub's public address that a facility configures (the ingress); the other two paths are
printed beside it.

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
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from distributed import Client  # noqa: E402
from distributed.comm import connect  # noqa: E402
from distributed.core import ConnectionPool  # noqa: E402
from distributed.worker import get_data_from_worker  # noqa: E402

from cmsaf_hub.comm import hub_connection_args, hub_security  # noqa: E402
from cmsaf_hub.reverse import BROKER_URL_ENV, KEEP_LOCAL_LISTENER_ENV, outbound_worker_command  # noqa: E402
from cluster_start import running_service_hub  # noqa: E402  (a dev IAM + hub + service, shared by benchmarks)
from devstack.hub import free_port  # noqa: E402
from devstack.ideal_relay import start_relay_chain, stop_relays  # noqa: E402
from devstack.ingress import start_ingress  # noqa: E402

#: Each brokered path is measured against the same worker reached directly.
INGRESS, OWN_LISTENER, THROUGH_HUB = "brokered, hub's ingress", "brokered, broker's listener", "brokered, hub's proxy"
DIRECT = "  same worker, direct tcp://"
#: Relays each brokered path crosses (peer -> ... -> worker), and the ideal-relay paths of the floor.
HOPS = {INGRESS: 3, OWN_LISTENER: 1, THROUGH_HUB: 3}
FLOOR = {hops: f"ideal relays, {hops} hop{'s' if hops > 1 else ''}" for hops in (1, 2, 3)}


def local_listener(dask_worker) -> str:
    """Runs on the worker: its loopback listener's address (kept beside the hub one)."""
    return next(listener.contact_address for listener in dask_worker.listeners
                if listener.contact_address.startswith("tcp://"))


async def fetch(pool: ConnectionPool, key: str, address: str) -> int:
    response = await get_data_from_worker(pool, [key], address)
    assert response["status"] == "OK", response
    return len(response["data"][key])


async def measure(addresses: dict[str, tuple[str, str, str]], token: str, *, rounds: int, repeats: int,
                  mbytes: int) -> dict[str, dict[str, float]]:
    """``addresses``: path -> (address, key of the big result, key of the small one) on that worker."""
    pool = await ConnectionPool(limit=8, connection_args=hub_connection_args(token))
    try:
        results: dict[str, dict[str, list[float]]] = {p: {"gather": [], "rtt": [], "connect": []} for p in addresses}
        for _ in range(repeats):
            for path, (address, big, small) in addresses.items():  # interleaved: each repeat measures every path
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


def at_host(url: str, host: str, port: int) -> str:
    """``url`` with its host and port replaced (the cluster's comm URL at the ingress)."""
    return urlsplit(url)._replace(netloc=f"{host}:{port}").geturl()


def start_worker(scheduler_url: str, name: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        outbound_worker_command(scheduler_url, "--name", name, "--nthreads", "1", "--no-dashboard",
                                "--memory-limit", "0"),
        env={**os.environ, KEEP_LOCAL_LISTENER_ENV: "1", **env}, stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"), start_new_session=True)


def stop_worker(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGTERM)  # the wrapper stops the worker (killed after its grace)
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)


async def main(rounds: int, repeats: int, mbytes: int) -> int:
    broker_listen = f"127.0.0.1:{free_port()}"
    config = (f"c.LocalBackend.same_user = True\nc.Broker.listen = {broker_listen!r}\n"
              f"c.Broker.public_url = 'http://{broker_listen}'\n")
    workers: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="outbound-workers-") as tmp:
        async with running_service_hub(Path(tmp), config=config) as sh:
            ingress = await start_ingress(Path(tmp) / "ingress", sh.hub.url, broker=("services/cmsaf", broker_listen))
            token = await sh.hub.create_user("alice")
            async with sh.client(token) as api:
                cid = (await api.post("clusters", json={"options": {"workers": 0}})).json()["id"]
                model = await sh.wait_status(api, cid, "running")
                join = (await api.get(f"clusters/{cid}/worker-credential")).json()
            credential = {join["environment_variable"]: join["credential"]}
            try:
                workers.append(start_worker(model["scheduler_address"], "via-hub", credential, Path(tmp) / "hub.log"))
                workers.append(start_worker(model["scheduler_address"], "via-broker",
                                            {**credential, BROKER_URL_ENV: join["broker_url"]}, Path(tmp) / "broker.log"))
                workers.append(start_worker(at_host(model["scheduler_address"], ingress.host, ingress.port), "via-ingress", {**credential, BROKER_URL_ENV: ingress.url.rstrip("/")},
                                            Path(tmp) / "ingress.log"))
                async with Client(model["scheduler_address"], security=hub_security(token), asynchronous=True,
                                  timeout=60) as client:
                    await client.wait_for_workers(3, timeout=120)
                    by_name = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
                    addresses: dict[str, tuple[str, str, str]] = {}
                    held = []  # the futures keep their results on the workers
                    for name, brokered in (("via-ingress", INGRESS), ("via-broker", OWN_LISTENER), ("via-hub", THROUGH_HUB)):
                        worker = by_name[name]
                        assert worker.startswith("hubrev://"), worker
                        big = client.submit(os.urandom, mbytes * 2**20, workers=[worker], pure=False)
                        small = client.submit(os.urandom, 16, workers=[worker], pure=False)
                        await asyncio.wait_for(client.gather([big, small], direct=False), 120)
                        held += [big, small]
                        local = (await client.run(local_listener, workers=[worker]))[worker]
                        addresses[brokered] = (worker, big.key, small.key)
                        addresses[brokered + DIRECT] = (local, big.key, small.key)
                    assert by_name["via-broker"].startswith(f"hubrev://{broker_listen}/"), by_name
                    assert by_name["via-ingress"].startswith(f"hubrev://{ingress.host}:{ingress.port}/"), by_name
                    listener, big_key, small_key = addresses[INGRESS + DIRECT]
                    relays, ports = start_relay_chain(listener.removeprefix("tcp://"), max(FLOOR))
                    try:
                        for hops, port in enumerate(ports, 1):
                            addresses[FLOOR[hops]] = (f"tcp://127.0.0.1:{port}", big_key, small_key)
                        figures = await measure(addresses, token, rounds=rounds, repeats=repeats, mbytes=mbytes)
                    finally:
                        stop_relays(relays)
            finally:
                for worker in workers:
                    stop_worker(worker)
                async with sh.client(token) as api:  # clusters outlive the service: stop this one
                    await api.delete(f"clusters/{cid}")
                    await sh.wait_status(api, cid, "stopped")
                ingress.stop()
    print(f"{repeats} interleaved repeats (medians); {mbytes} MB gathers, {rounds} round trips each; "
          f"{os.cpu_count()} CPUs")
    for path, f in figures.items():
        print(f"  {path.partition(DIRECT)[1] or path:30s} gather {f['gather']:8.1f} MB/s   round trip {f['rtt']:6.2f} ms   "
              f"new connection {f['connect']:6.2f} ms")
    direct = figures[INGRESS + DIRECT]  # the floor's relays lead to the ingress worker's listener
    for hops, path in FLOOR.items():
        f = figures[path]
        print(f"  floor, {path}/direct: gather {f['gather'] / direct['gather']:.2f}x   "
              f"round trip {f['rtt'] / direct['rtt']:.2f}x")
    for brokered, judged in ((INGRESS, True), (OWN_LISTENER, False), (THROUGH_HUB, False)):
        b, d, floor = figures[brokered], figures[brokered + DIRECT], figures[FLOOR[HOPS[brokered]]]
        gather, rtt = b["gather"] / d["gather"], b["rtt"] / d["rtt"]

        def target(text: str, met: bool) -> str:
            return f" (target {text}: {'met' if met else 'MISSED'})" if judged else ""

        print(f"  {brokered}/direct: gather {gather:.2f}x{target('>= 0.7', gather >= 0.7)}   "
              f"round trip {rtt:.2f}x{target('<= 1.5', rtt <= 1.5)}   new connection {b['connect'] / d['connect']:.1f}x")
        print(f"    against the floor of its {HOPS[brokered]} hop{'s' if HOPS[brokered] > 1 else ''}: "
              f"gather {b['gather'] / floor['gather']:.2f}x   round trip {b['rtt'] / floor['rtt']:.2f}x")
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
