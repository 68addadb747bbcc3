"""HubCluster's life cycle against a loopback JSON server and a real Dask scheduler and worker.

The JSON server stands in for the service's REST answers (the service's logic is tested elsewhere);
the scheduler is real and listens on ``ws://``, like the hub's relay, so connecting, computing and
the notebook view run for real.
"""

from __future__ import annotations

import json

import pytest
from distributed import Scheduler, Worker
from distributed.core import Status

from cmsaf_hub.client import Hub, HubCluster, HubError, OptionsError
from tests.test_client_http import API, TOKEN, cluster_json
from tests.client_fixtures import scheduler, server  # noqa: F401 (fixtures)


def running(cid: str, scheduler, **extra) -> dict:
    return cluster_json(cid, scheduler_address=scheduler.address, **extra)


async def test_create_compute_scale_adapt_close(server, scheduler):
    server.routes[("POST", API + "clusters")] = (201, cluster_json("c1", "pending"))
    server.routes[("GET", API + "clusters/c1")] = [
        (200, cluster_json("c1", "starting")),
        (200, running("c1", scheduler)),
    ]
    server.routes[("POST", API + "clusters/c1/scale")] = (200, running("c1", scheduler))
    server.routes[("POST", API + "clusters/c1/adapt")] = (
        200,
        running("c1", scheduler, adapt={"minimum": 0, "maximum": 3}),
    )
    server.routes[("DELETE", API + "clusters/c1")] = (200, cluster_json("c1", "stopping"))
    hub = Hub(config=server.config(), asynchronous=True)
    cluster = await HubCluster(hub=hub, asynchronous=True, workers=1, cores=1)
    try:
        assert cluster.status == Status.running
        assert cluster.cluster_id == cluster.name == "c1"
        assert cluster.dashboard_link.endswith("/clusters/c1/dashboard/status")
        async with cluster.get_client() as client:
            assert await client.submit(lambda x: x + 1, 41) == 42
        await cluster.scale(3)
        await cluster.adapt(minimum=0, maximum=3)
        assert cluster.report.adapt == {"minimum": 0, "maximum": 3}
        html = cluster._repr_html_()
        assert "running" in html and "Pending in queue" in html and "Adaptive" in html
        assert f"{server.url}api/v1/clusters/c1/logs" in html
        assert TOKEN not in html and TOKEN not in repr(cluster) and TOKEN not in repr(cluster.security)
    finally:
        await cluster.close()
    await hub.close()
    calls = [(r.method, r.path.removeprefix(API)) for r in server.requests]
    assert calls[:2] == [("GET", "options"), ("POST", "clusters")]
    assert ("POST", "clusters/c1/scale") in calls and calls[-1] == ("DELETE", "clusters/c1")
    bodies = {r.path.removeprefix(API): r.body for r in server.requests if r.method == "POST"}
    assert json.loads(bodies["clusters"]) == {"options": {"workers": 1, "cores": 1}}
    assert json.loads(bodies["clusters/c1/scale"]) == {"workers": 3}
    assert json.loads(bodies["clusters/c1/adapt"]) == {"minimum": 0, "maximum": 3}
    assert all(r.headers["Authorization"] == f"token {TOKEN}" for r in server.requests)


async def test_from_id_reconnects_and_leaves_the_cluster_running(server, scheduler):
    server.routes[("GET", API + "clusters/c2")] = (200, running("c2", scheduler))
    async with HubCluster.from_id("c2", hub=Hub(config=server.config(), asynchronous=True), asynchronous=True) as cluster:
        assert cluster.shutdown_on_close is False
        async with cluster.get_client() as client:
            assert await client.submit(sum, [1, 2]) == 3
    assert not [r for r in server.requests if r.method in ("POST", "DELETE")]


async def test_invalid_option_fails_before_creating(server):
    with pytest.raises(OptionsError, match="invalid value 0 for option 'cores'"):
        await HubCluster(hub=Hub(config=server.config(), asynchronous=True), asynchronous=True, cores=0)
    assert [r.method for r in server.requests] == ["GET"]


async def test_cluster_that_fails_to_start_is_reported_and_deleted(server):
    server.routes[("POST", API + "clusters")] = (201, cluster_json("c3", "pending"))
    server.routes[("GET", API + "clusters/c3")] = (200, cluster_json("c3", "failed", reason="image not found"))
    server.routes[("DELETE", API + "clusters/c3")] = (200, cluster_json("c3", "stopping"))
    with pytest.raises(HubError, match="^cluster c3 failed: image not found$"):
        await HubCluster(hub=Hub(config=server.config(), asynchronous=True), asynchronous=True)
    assert server.requests[-1].method == "DELETE"


def test_sync_api_from_plain_code(server, scheduler_in_thread):
    address = scheduler_in_thread
    server.routes[("POST", API + "clusters")] = (201, cluster_json("c4", "running", scheduler_address=address))
    server.routes[("DELETE", API + "clusters/c4")] = (200, cluster_json("c4", "stopping"))
    server.routes[("GET", API + "clusters/c4")] = (200, cluster_json("c4", "running", scheduler_address=address))
    with HubCluster(hub=Hub(config=server.config()), workers=1) as cluster:
        with cluster.get_client() as client:
            assert client.submit(pow, 2, 5).result() == 32
    assert server.requests[-1].method == "DELETE"
    with Hub(config=server.config()) as hub:
        with hub.connect("c4") as again:  # shares the handle's event loop
            with again.get_client() as client:
                assert client.submit(pow, 3, 2).result() == 9
        with hub.new_cluster(workers=1) as made:
            assert made.shutdown_on_close and made.cluster_id == "c4"
    assert [r.method for r in server.requests].count("DELETE") == 2


@pytest.fixture
def scheduler_in_thread():
    """A real ws:// scheduler and one worker on a background loop, for the sync API test."""
    from distributed.utils import LoopRunner, sync

    runner = LoopRunner()
    runner.start()
    holder = {}

    async def start():
        holder["s"] = await Scheduler(protocol="ws", host="127.0.0.1", port=0, dashboard_address=":0")
        holder["w"] = await Worker(holder["s"].address, nthreads=1)

    async def stop():
        await holder["w"].close()
        await holder["s"].close()

    sync(runner.loop, start)
    yield holder["s"].address
    sync(runner.loop, stop)
    runner.stop()


async def test_live_widget_follows_worker_progress(server, scheduler):
    import asyncio

    import dask.config
    import ipywidgets

    base = dict(scheduler_address=scheduler.address)
    server.routes[("GET", API + "clusters/c6")] = (200, running("c6", scheduler))
    with dask.config.set({"cmsaf.client.refresh-interval": 0.1, "distributed.deploy.cluster-repr-interval": "100ms"}):
        cluster = await HubCluster.from_id("c6", hub=Hub(config=server.config(), asynchronous=True), asynchronous=True)
    try:
        tab = cluster._widget()
        assert isinstance(tab, ipywidgets.Tab)
        status = tab.children[0]
        assert "<td>1</td>" in status.value  # pending in queue, from the first report
        held = {"requested": 3, "pending": 0, "running": 1, "held": 2, "failed": 0,
                "held_reasons": ["Job exceeded memory request"]}
        server.routes[("GET", API + "clusters/c6")] = (200, cluster_json("c6", workers=held, **base))
        for _ in range(100):
            if "Job exceeded memory request" in status.value:
                break
            await asyncio.sleep(0.05)
        assert "Job exceeded memory request" in status.value
        assert "Workers: 1 / 3" in tab.children[1].children[0].value
    finally:
        await cluster.close()
