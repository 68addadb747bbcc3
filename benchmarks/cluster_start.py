"""Seconds from asking for a cluster to scheduler-ready and to 4 workers connected.

This service (local backend, under a real hub, reached through the hub's proxy like a user) against
dask-gateway-server's local backend (its own API and proxy), measured in the same run, alternating
which goes first.
Prints each round, the medians and the ratio service/gateway (target ≤ 1.0).

    .venv/bin/python benchmarks/cluster_start.py [--rounds 4] [--quick]

``--quick`` (what CI runs): one round with one worker; it checks the script, not the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distributed import Client  # noqa: E402

from cmsaf_hub.comm import hub_security  # noqa: E402
from devstack.hub import HubProcess, IAMClientSettings, free_port  # noqa: E402
from devstack.iam import DevIAM  # noqa: E402
from devstack.pki import ensure_dev_pki  # noqa: E402
from devstack.hubs import RunningHub, admin_service_config, new_admin_token  # noqa: E402
from devstack.service_hubs import HUB_ENV, ServiceHub, service_config_text  # noqa: E402

WORKERS = 4
#: Seconds of quiet before each measurement (the previous cluster's processes finish exiting).
SETTLE = 3.0
DASK = str(Path(sys.executable).with_name("dask"))


@contextlib.asynccontextmanager
async def running_service_hub(state: Path, *, backend: str = "local", config: str = ""):
    """A dev IAM, a hub and the cluster service, like tests/conftest.py's hub_factory builds them."""
    from cmsaf_hub.service.crypto import new_crypt_key
    from devstack.hubs import HUB_CLIENT_ID
    from devstack.iam import HUB_GRANT_TYPES

    ensure_dev_pki(state)
    key = new_crypt_key()
    service_dir = state / "service"
    admin_token = new_admin_token()
    secret = secrets.token_urlsafe(24)
    extra = admin_service_config(admin_token) + "c.Authenticator.admin_users = {'root'}\n"
    extra += service_config_text(service_dir, port=free_port(), crypt_key=key, backend=backend, config=config)
    process = HubProcess(state_dir=state / "hub", iam=IAMClientSettings(issuer="", client_id=HUB_CLIENT_ID,
                         client_secret=secret), crypt_key=secrets.token_hex(32), extra_config=extra,
                         env=dict(HUB_ENV))
    iam = DevIAM(state / "iam", clients=[{"client_id": HUB_CLIENT_ID, "client_secret": secret,
                 "redirect_uris": [f"{process.url}hub/oauth_callback"], "grant_types": HUB_GRANT_TYPES}])
    await iam.start()
    process.iam.issuer, process.iam.ca_cert = iam.issuer, iam.ca_cert
    hub = RunningHub(process=process, admin_token=admin_token, iam=iam)
    try:
        await hub.start()
        sh = ServiceHub(hub=hub, service_dir=service_dir, crypt_key=key)
        await sh.wait_ready()
        yield sh
    finally:
        await hub.stop()
        await iam.stop()


async def service_round(sh: ServiceHub, token: str) -> tuple[float, float]:
    async with sh.client(token) as api:
        t0 = time.perf_counter()
        r = await api.post("clusters", json={"options": {"workers": WORKERS, "cores": 1, "memory": 1.0}})
        r.raise_for_status()
        model = r.json()
        while model["status"] != "running":
            model = (await api.get(f"clusters/{model['id']}", params={"wait": 30, "status": model["status"]})).json()
            if model["status"] in ("stopped", "failed"):
                raise RuntimeError(f"cluster ended: {model['reason']}")
        ready = time.perf_counter() - t0
        async with Client(model["scheduler_address"], security=hub_security(token), asynchronous=True,
                          timeout=60) as client:
            await client.wait_for_workers(WORKERS, timeout=120)
            workers = time.perf_counter() - t0
        await api.delete(f"clusters/{model['id']}")
        await sh.wait_status(api, model["id"], "stopped")
    return ready, workers


@contextlib.contextmanager
def running_gateway(state: Path):
    port, proxy_port = free_port(), free_port()
    config = state / "gateway_config.py"
    config.write_text(f"""
c.DaskGateway.address = "127.0.0.1:{port}"
c.Proxy.address = "127.0.0.1:{proxy_port}"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.ClusterConfig.scheduler_cmd = [{DASK!r}, "scheduler"]
c.ClusterConfig.worker_cmd = [{DASK!r}, "worker"]
c.ClusterConfig.worker_cores = 1
c.ClusterConfig.worker_memory = "1 G"
c.LocalBackend.cluster_start_timeout = 120
""")
    log = open(state / "gateway.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("dask-gateway-server")), "-f", str(config)],
                            cwd=state, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield f"http://127.0.0.1:{proxy_port}"  # users reach the gateway through its proxy
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


async def gateway_round(address: str, **gateway_kwargs) -> tuple[float, float]:
    """The dask-gateway client's own calls: against dask-gateway-server (default) or this service."""
    from dask_gateway import Gateway
    from dask_gateway.auth import BasicAuth

    gateway_kwargs.setdefault("auth", BasicAuth("alice", ""))
    async with Gateway(address, asynchronous=True, **gateway_kwargs) as gateway:
        t0 = time.perf_counter()
        cluster = await gateway.new_cluster()
        ready = time.perf_counter() - t0
        await cluster.scale(WORKERS)
        async with cluster.get_client(set_as_default=False) as client:
            await client.wait_for_workers(WORKERS, timeout=120)
            workers = time.perf_counter() - t0
        await cluster.shutdown()
    return ready, workers


async def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cluster-start-") as tmp:
        state = Path(tmp)
        (state / "gw").mkdir()
        results: dict[str, list[tuple[float, float]]] = {"service": [], "gateway": [], "gateway-client": []}
        proxy_port = free_port()  # the service's dask-gateway scheduler proxy (docs/dask-gateway.md)
        async with running_service_hub(state / "svc", config=f"c.DaskGateway.proxy_listen = '127.0.0.1:{proxy_port}'\n") as sh:
            token = await sh.hub.create_user("alice")
            from dask_gateway.auth import JupyterHubAuth

            service_url = f"{sh.hub.url}services/cmsaf"
            on_service = {"proxy_address": f"gateway://127.0.0.1:{proxy_port}", "public_address": service_url,
                          "auth": JupyterHubAuth(api_token=token)}
            with running_gateway(state / "gw") as gateway:
                for i in range(rounds):
                    # alternate who goes first, and let the previous round's processes exit first
                    order = ["service", "gateway", "gateway-client"] if i % 2 == 0 else ["gateway-client", "gateway", "service"]
                    for name in order:
                        await asyncio.sleep(SETTLE)
                        run = {"service": lambda: service_round(sh, token), "gateway": lambda: gateway_round(gateway),
                               "gateway-client": lambda: gateway_round(f"{service_url}/gateway", **on_service)}[name]()
                        results[name].append(await run)
                    print(f"round {i + 1}: service ready {results['service'][-1][0]:.2f}s "
                          f"{WORKERS} workers {results['service'][-1][1]:.2f}s | dask-gateway ready "
                          f"{results['gateway'][-1][0]:.2f}s {WORKERS} workers {results['gateway'][-1][1]:.2f}s | "
                          f"dask-gateway client on the service ready {results['gateway-client'][-1][0]:.2f}s "
                          f"{WORKERS} workers {results['gateway-client'][-1][1]:.2f}s", flush=True)
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in results.items()}
    print(f"median over {rounds} rounds (seconds from request):")
    print(f"  scheduler ready:      service {med['service'][0]:.2f}  dask-gateway {med['gateway'][0]:.2f}  "
          f"ratio {med['service'][0] / med['gateway'][0]:.2f} (target <= 1.0)")
    print(f"  {WORKERS} workers connected: service {med['service'][1]:.2f}  dask-gateway {med['gateway'][1]:.2f}  "
          f"ratio {med['service'][1] / med['gateway'][1]:.2f} (target <= 1.0)")
    # the same dask-gateway client code, against this service and against dask-gateway-server
    print(f"  dask-gateway client against this service vs against dask-gateway-server: scheduler ready "
          f"{med['gateway-client'][0]:.2f} vs {med['gateway'][0]:.2f} (ratio {med['gateway-client'][0] / med['gateway'][0]:.2f}), "
          f"{WORKERS} workers {med['gateway-client'][1]:.2f} vs {med['gateway'][1]:.2f} "
          f"(ratio {med['gateway-client'][1] / med['gateway'][1]:.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="one round, one worker: checks the script")
    args = parser.parse_args()
    if args.quick:
        WORKERS, args.rounds = 1, 1
    os.environ.setdefault("PYTHONPATH", str(REPO))
    asyncio.run(main(args.rounds))
