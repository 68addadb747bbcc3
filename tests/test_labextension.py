"""The Dask sidebar backed by the service: HubClusterManager's API and the dashboard proxy route.

The service's REST answers come from a loopback JSON server; the scheduler (manager tests) and
the Jupyter server (route test) are real processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from cmsaf_hub.client.labextension import HubClusterManager, install_manager, lab_id_for, make_hub_cluster_model
from cmsaf_hub.client.report import ClusterReport
from tests.test_client_http import API, TOKEN, cluster_json
from tests.client_fixtures import scheduler, server  # noqa: F401 (fixtures)


def test_lab_ids_are_uuid_shaped_and_stable():
    u = str(uuid.uuid4())
    assert lab_id_for(u) == u
    assert lab_id_for("c1") == lab_id_for("c1") != lab_id_for("c2")
    assert uuid.UUID(lab_id_for("3f2a9c"))  # accepted by the labextension's route regex


def test_model_from_report_counts_running_workers():
    report = ClusterReport.from_json(
        cluster_json("c1", options={"cores": 2, "memory": 4.0}, adapt={"minimum": 1, "maximum": 5})
    )
    model = make_hub_cluster_model("lab-1", report)
    assert model == {
        "id": "lab-1",
        "name": "HubCluster c1",
        "scheduler_address": "ws://127.0.0.1/services/cmsaf/clusters/c1/comm",
        "dashboard_link": "http://127.0.0.1/services/cmsaf/clusters/c1/dashboard/status",
        "workers": 1,
        "memory": "4.00 GiB",
        "cores": 2,
        "adapt": {"minimum": 1, "maximum": 5},
    }


def test_a_cluster_without_workers_says_how_to_get_some():
    """The sidebar's NEW makes a cluster with the default options (no workers): its card says to scale."""
    no_workers = {"requested": 0, "pending": 0, "running": 0, "held": 0, "failed": 0}
    idle = make_hub_cluster_model("lab-2", ClusterReport.from_json(cluster_json("c2", workers=no_workers)))
    assert idle["name"] == "HubCluster c2 (no workers yet: Scale adds some)"
    adaptive = ClusterReport.from_json(cluster_json("c2", workers=no_workers, adapt={"minimum": 0, "maximum": 4}))
    assert make_hub_cluster_model("lab-2", adaptive)["name"] == "HubCluster c2"
    assert make_hub_cluster_model("lab-1", ClusterReport.from_json(cluster_json("c1")))["name"] == "HubCluster c1"


async def test_manager_creates_lists_others_scales_adapts_and_stops(server, scheduler):
    server.routes[("POST", API + "clusters")] = (201, cluster_json("c1", "pending"))
    server.routes[("GET", API + "clusters/c1")] = (200, cluster_json("c1", scheduler_address=scheduler.address))
    server.routes[("POST", API + "clusters/c1/scale")] = (200, cluster_json("c1", scheduler_address=scheduler.address))
    server.routes[("POST", API + "clusters/c1/adapt")] = (
        200, cluster_json("c1", scheduler_address=scheduler.address, adapt={"minimum": 0, "maximum": 4}),
    )
    server.routes[("DELETE", API + "clusters/c1")] = (200, cluster_json("c1", "stopping"))
    server.routes[("DELETE", API + "clusters/cli-made")] = (404, {"error": "no such cluster"})
    manager = HubClusterManager(hub_config=server.config())
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setitem(os.environ, "DASK_LABEXTENSION__DEFAULT__WORKERS", "2")
            import dask.config

            dask.config.refresh()
            model = await manager.start_cluster()
        dask.config.refresh()
        lab_id = model["id"]
        assert lab_id == lab_id_for("c1") and model["name"] == "HubCluster c1"
        create = next(r for r in server.requests if r.method == "POST")
        assert json.loads(create.body) == {"options": {"workers": 2}}
        assert not [r for r in server.requests if r.method == "DELETE"]  # disconnecting kept it

        # A cluster made elsewhere (the CLI, another session) shows up after a refresh;
        # stopped ones do not.
        server.routes[("GET", API + "clusters")] = (
            200,
            [cluster_json("c1"), cluster_json("cli-made"), cluster_json("old", "stopped")],
        )
        await manager.refresh()
        assert sorted(m["name"] for m in manager.list_clusters()) == ["HubCluster c1", "HubCluster cli-made"]
        assert manager.get_cluster(lab_id_for("cli-made"))["workers"] == 1

        assert (await manager.scale_cluster(lab_id, 3))["id"] == lab_id
        assert json.loads(server.requests[-1].body) == {"workers": 3}
        model = manager.adapt_cluster(lab_id, 0, 4)  # synchronous in dask-labextension
        assert model["adapt"] == {"minimum": 0, "maximum": 4}
        for _ in range(100):
            if server.requests[-1].path == API + "clusters/c1/adapt":
                break
            await asyncio.sleep(0.05)
        assert json.loads(server.requests[-1].body) == {"minimum": 0, "maximum": 4}

        assert (await manager.close_cluster(lab_id))["id"] == lab_id
        assert server.requests[-1].method == "DELETE" and server.requests[-1].path == API + "clusters/c1"
        assert await manager.close_cluster(lab_id_for("cli-made")) is not None  # 404: already gone
        assert await manager.close_cluster(lab_id) is None
        assert manager.dashboard_target(lab_id_for("nope")) is None
    finally:
        await manager.close()
    assert [r.path for r in server.requests if r.method == "DELETE"] == [
        API + "clusters/c1",
        API + "clusters/cli-made",
    ]


async def test_list_clusters_schedules_a_refresh(server):
    server.routes[("GET", API + "clusters")] = (200, [cluster_json("c5")])
    manager = HubClusterManager(hub_config=server.config(), refresh_interval=0)
    try:
        assert manager.list_clusters() == []  # the cache starts empty; a refresh is now running
        for _ in range(100):
            if manager.list_clusters():
                break
            await asyncio.sleep(0.05)
        assert [m["name"] for m in manager.list_clusters()] == ["HubCluster c5"]
    finally:
        await manager.close()


async def test_install_manager_rebinds_the_handlers_global(server):
    import dask_labextension.clusterhandler as ch
    import dask_labextension.dashboardhandler as dh
    import dask_labextension.manager as m

    saved = (m.manager, ch.manager, dh.manager)
    manager = HubClusterManager(hub_config=server.config())
    try:
        install_manager(manager)
        assert m.manager is ch.manager is dh.manager is manager
    finally:
        m.manager, ch.manager, dh.manager = saved
        await manager.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterServer:
    """A real ``jupyter server`` with dask-labextension and ``cmsaf_hub.client.labextension`` enabled."""

    def __init__(self, tmp_path, service_url: str, token: str):
        self.port, self.token = _free_port(), "jupyter-token-123"
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
            "JUPYTER_DATA_DIR": str(tmp_path / "data"),
            "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
            "CMSAF_SERVICE_URL": service_url,
            "CMSAF_TOKEN": token,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root", f"--port={self.port}",
             "--ip=127.0.0.1", f"--IdentityProvider.token={self.token}",
             "--ServerApp.jpserver_extensions={'cmsaf_hub.client.labextension': True}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def get(self, path: str) -> tuple[int, bytes]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/{path}", headers={"Authorization": f"token {self.token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def wait_for_clusters(self, count: int, timeout: float = 60) -> list[dict]:
        """Poll the sidebar's list (as the frontend does) until it shows ``count`` clusters."""
        deadline = time.monotonic() + timeout
        listed: list = []
        while time.monotonic() < deadline:
            try:
                status, body = self.get("dask/clusters")
                listed = json.loads(body) if status == 200 else []
            except OSError:
                listed = []
            if len(listed) == count:
                return listed
            time.sleep(0.3)
        raise AssertionError(f"the sidebar listed {listed}, not {count} clusters")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.mark.slow
def test_jupyter_server_lists_service_clusters_and_proxies_the_dashboard(server, tmp_path):
    """The sidebar API lists the service's clusters and ``dask/dashboard/<id>/...`` reaches the
    service's dashboard path with the hub token, not the browser's Jupyter credentials."""
    server.routes[("GET", API + "clusters")] = (200, [cluster_json("c9")])
    dash = "/services/cmsaf/clusters/c9/dashboard/individual-plots.json"
    server.routes[("GET", dash)] = (200, {"Task Stream": "/individual-task-stream"})
    jupyter = JupyterServer(tmp_path, server.url, TOKEN)
    try:
        assert [c["name"] for c in jupyter.wait_for_clusters(1)] == ["HubCluster c9"]
        status, body = jupyter.get(f"dask/dashboard/{lab_id_for('c9')}/individual-plots.json")
        assert (status, json.loads(body)) == (200, {"Task Stream": "/individual-task-stream"})
        (proxied,) = [r for r in server.requests if r.path == dash]
        assert proxied.headers["Authorization"] == f"token {TOKEN}"
        assert jupyter.token not in json.dumps(proxied.headers)
        assert "Accept-Encoding" not in proxied.headers  # an uncompressed body, to rewrite
        # the dashboard's own paths in what it serves point back at this proxy (the browser has no
        # cookie for the service); other clusters' paths and other text stay as they are
        page = "/services/cmsaf/clusters/c9/dashboard/individual-task-stream"
        server.routes[("GET", page)] = (200, {
            "script": "/services/cmsaf/clusters/c9/dashboard/static/js/bokeh.min.js",
            "app_path": "/services/cmsaf/clusters/c9/dashboard/individual-task-stream",
            "other": "/services/cmsaf/clusters/c8/dashboard/static/x.js"})
        status, body = jupyter.get(f"dask/dashboard/{lab_id_for('c9')}/individual-task-stream")
        lab = f"/dask/dashboard/{lab_id_for('c9')}/"
        assert (status, json.loads(body)) == (200, {
            "script": f"{lab}static/js/bokeh.min.js", "app_path": f"{lab}individual-task-stream",
            "other": "/services/cmsaf/clusters/c8/dashboard/static/x.js"})
        assert jupyter.get(f"dask/dashboard/{lab_id_for('nope')}/status")[0] == 404
    finally:
        jupyter.stop()
