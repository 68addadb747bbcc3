"""Running the cluster service under a real hub (devstack/hubs.py) for tests and benchmarks."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from cmsaf_hub.service.crypto import new_crypt_key
from devstack.hub import free_port
from devstack.hubs import RunningHub

REPO = Path(__file__).resolve().parents[1]

#: Fast loops for tests; individual tests add their own lines.
FAST_CONFIG = """
c.Reconciler.poll_interval = 0.3
c.Reconciler.activity_interval = 0.5
c.Reconciler.backoff_base = 0.2
c.LocalBackend.stop_grace = 3
c.CmsafService.owner_check_interval = 1
c.CmsafService.user_cache_seconds = 0.5
# The HTTP surface under test runs clusters as the service's own OS user (logged as a warning): the
# test's users have no OS accounts and pytest's 0700 tree keeps other users out. Clusters running as
# their owners, isolated, are tested with real OS users in tests/test_isolation_*.py.
c.LocalBackend.same_user = True
"""


@dataclass
class ServiceHub:
    hub: RunningHub
    service_dir: Path
    crypt_key: str = field(repr=False)

    @property
    def api(self) -> str:
        return f"{self.hub.url}services/cmsaf/api/v1/"

    def client(self, token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.api, headers={"Authorization": f"token {token}"}, timeout=60)

    async def comm_answer(self, cluster_id: str, token: str) -> tuple[int, str]:
        """The hub's answer to a scheduler-comm websocket upgrade carrying ``token``, as the hub comm
        sends it: ``(101, "")`` when it opens, else the status and the ``error`` text of the refusal."""
        url = self.hub.url.replace("http://", "ws://", 1) + f"services/cmsaf/clusters/{cluster_id}/comm"
        request = HTTPRequest(url, headers={"Authorization": f"token {token}"}, request_timeout=60)
        try:
            ws = await websocket_connect(request)
        except HTTPClientError as e:
            return e.code, json.loads(e.response.body)["error"]
        ws.close()
        return 101, ""

    async def wait_ready(self, timeout: float = 60) -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            for _ in range(int(timeout / 0.2)):
                try:
                    if (await http.get(self.api + "health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"the service did not become healthy; hub log tail:\n{self.hub.log_text()[-3000:]}")

    async def wait_status(self, client: httpx.AsyncClient, cluster_id: str, status: str, timeout: float = 90) -> dict:
        """Long-poll until the cluster reaches ``status``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        model = (await client.get(f"clusters/{cluster_id}")).json()
        while model["status"] != status and loop.time() < deadline:
            if model["status"] in ("stopped", "failed") and status not in ("stopped", "failed"):
                raise AssertionError(f"cluster ended {model['status']}: {model['reason']}")
            r = await client.get(f"clusters/{cluster_id}", params={"wait": 10, "status": model["status"]})
            model = r.json()
        assert model["status"] == status, model
        return model

    async def wait_workers(self, client, cluster_id: str, running: int, timeout: float = 90) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            model = (await client.get(f"clusters/{cluster_id}")).json()
            w = model["workers"]
            if w["running"] == running and w["pending"] == 0 and w["held"] == 0:
                return model
            await asyncio.sleep(0.3)
        raise AssertionError(f"workers never reached {running} running: {model['workers']}")


def service_config_text(service_dir: Path, *, port: int, crypt_key: str, backend: str = "local",
                        config: str = "", extra_env: dict | None = None) -> str:
    """Hub config lines registering the service (through cmsaf_hub.service.hubconfig, like production)."""
    service_dir.mkdir(parents=True, exist_ok=True)
    config_file = service_dir / "service_config.py"
    config_file.write_text(FAST_CONFIG + config)
    env = {"PYTHONPATH": str(REPO), **(extra_env or {})}
    return f"""
from cmsaf_hub.service.hubconfig import cluster_service
cluster_service(
    c,
    url="http://127.0.0.1:{port}",
    public_url=c.JupyterHub.bind_url,
    db_url="sqlite:///{service_dir / 'service.sqlite'}",
    backend={backend!r},
    crypt_key={crypt_key!r},
    config_file={str(config_file)!r},
    cwd={str(service_dir)!r},
    extra_env={env!r},
)
"""


#: The repository's config registers the service itself; these tests register it their own way
#: (their own directory, config file and backend), through the same cmsaf_hub.service.hubconfig call.
HUB_ENV = {"CMSAF_CLUSTER_SERVICE": "off"}

#: Hub admins of the service tests (the harness's admin service may not make users admins itself).
ADMIN_USERS = "c.Authenticator.admin_users = {'root'}\n"


async def start_service_hub(hub_factory, tmp_path: Path, *, backend: str = "local", config: str = "",
                            extra_env: dict | None = None, hub_config: str = "",
                            iam_options: dict | None = None) -> ServiceHub:
    """The service (``config``: its config lines) under a hub from ``hub_factory`` (``hub_config``:
    more hub config lines; ``iam_options``: the dev IAM's, e.g. short token lifetimes)."""
    service_dir = tmp_path / "service"
    key = new_crypt_key()
    text = service_config_text(service_dir, port=free_port(), crypt_key=key, backend=backend, config=config,
                               extra_env=extra_env)
    hub = await hub_factory(extra_config=ADMIN_USERS + text + hub_config, env=HUB_ENV, iam_options=iam_options)
    sh = ServiceHub(hub=hub, service_dir=service_dir, crypt_key=key)
    await sh.wait_ready()
    return sh
