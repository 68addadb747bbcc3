"""The forwarder behind a real JupyterHub and configurable-http-proxy.

A small hub (dummy authenticator, real CHP) routes ``/services/cmsaf/`` to a tornado app that mounts
only :func:`cmsaf_hub.service.forwarder.forwarder_handlers` (plus the OAuth callback), with a resolver over a
dict the tests edit. Real distributed schedulers (tcp + ws listeners, prefixed dashboards) and workers
sit behind it. Every request below goes through CHP, as a user's would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import signal
import subprocess
from dataclasses import replace

import httpx
import pytest
import pytest_asyncio
from distributed import Client, Scheduler, Worker
from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from tornado import web
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.websocket import websocket_connect

from cmsaf_hub.comm import CREDENTIAL_ENV, hub_security, hub_worker_command
from cmsaf_hub.service.forwarder import ClusterState, Target, dashboard_prefix, forwarder_handlers, new_worker_credential
from devstack.minihub import MiniHub

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

PREFIX = "/services/cmsaf/"
UNAUTHENTICATED = "Authentication required: log in to the hub or send 'Authorization: token <hub token>'."


class OAuthCallback(HubOAuthCallbackHandler):
    """The hub's OAuth callback, bound to this service's HubOAuth (not the process-wide singleton)."""

    def initialize(self, hub_auth: HubOAuth) -> None:
        self.hub_auth = hub_auth


class Service:
    """The part of the cluster service the forwarder needs: a tornado app, a resolver, HubOAuth."""

    def __init__(self, hub: MiniHub):
        self.hub = hub
        self.clusters: dict[str, Target] = {}
        self.server: HTTPServer | None = None
        self.hub_auth = HubOAuth(
            api_token=hub.service_token,
            api_url=hub.api_url,
            oauth_client_id="service-cmsaf",
            oauth_redirect_uri=f"{PREFIX}oauth_callback",  # as the hub registers it for a service
            base_url=PREFIX,
            hub_prefix="/hub/",
            access_scopes={"access:services!service=cmsaf"},
        )

    async def resolve(self, cluster_id: str) -> Target | None:
        return self.clusters.get(cluster_id)

    def start(self) -> None:
        app = web.Application(
            [
                *forwarder_handlers(PREFIX, self.resolve, self.hub_auth),
                (PREFIX + "oauth_callback", OAuthCallback, {"hub_auth": self.hub_auth}),
            ],
            hub_auth=self.hub_auth,
            cookie_secret=b"forwarder-tests-" + secrets.token_bytes(16),
        )
        self.server = HTTPServer(app)
        self.server.listen(self.hub.service_port, "127.0.0.1")

    async def stop(self) -> None:
        assert self.server is not None
        self.server.stop()
        await self.server.close_all_connections()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub_and_service(tmp_path_factory):
    """The service listens first: the hub waits ~30 s for an external service that is not up yet."""
    hub = MiniHub(tmp_path_factory.mktemp("minihub"))
    service = Service(hub)
    service.start()
    await hub.start()
    yield hub, service
    await hub.stop()
    await service.stop()


@pytest.fixture(scope="module")
def hub(hub_and_service) -> MiniHub:
    return hub_and_service[0]


@pytest.fixture(scope="module")
def service(hub_and_service) -> Service:
    return hub_and_service[1]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tokens(hub):
    return {name: await hub.user_token(name) for name in ("alice", "bob", "eve")}


async def start_scheduler(cluster_id: str) -> Scheduler:
    scheduler = Scheduler(
        protocol=["tcp", "ws"], port=[0, 0], host="127.0.0.1", dashboard_address="127.0.0.1:0",
        http_prefix=dashboard_prefix(PREFIX, cluster_id), idle_timeout=None,
    )
    await scheduler
    return scheduler


def target_for(scheduler: Scheduler, cluster_id: str, owner: str, credential_sha256: str | None = None) -> Target:
    ws_port = next(listener.get_host_port()[1] for listener in scheduler.listeners if listener.prefix == "ws://")
    return Target(
        cluster_id=cluster_id,
        owner=owner,
        state=ClusterState.RUNNING,
        scheduler_ws_address=f"ws://127.0.0.1:{ws_port}",
        dashboard_address=f"http://127.0.0.1:{scheduler.http_server.port}",
        worker_credential_sha256=credential_sha256,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(service):
    """alice's cluster ``c1``: a scheduler and one in-process worker, registered with the resolver."""
    scheduler = await start_scheduler("c1")
    async with Worker(scheduler.address, nthreads=1, dashboard=False):
        service.clusters["c1"] = target_for(scheduler, "c1", "alice")
        yield scheduler
    await scheduler.close()


def comm_url(hub: MiniHub, cluster_id: str) -> str:
    return f"ws://127.0.0.1:{hub.port}{PREFIX}clusters/{cluster_id}/comm"


def dashboard_url(hub: MiniHub, cluster_id: str, path: str = "status") -> str:
    return f"{hub.url}{PREFIX}clusters/{cluster_id}/dashboard/{path}"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


async def comm_answer(hub: MiniHub, cluster_id: str, token: str) -> tuple[int, str]:
    """The forwarder's answer to a scheduler-comm upgrade carrying ``token`` (as the hub comm sends
    it): ``(101, "")`` when it opens, else the status and the ``error`` text of the refusal."""
    try:
        ws = await websocket_connect(HTTPRequest(comm_url(hub, cluster_id), headers=auth(token), request_timeout=60))
    except HTTPClientError as e:
        return e.code, json.loads(e.response.body)["error"]
    ws.close()
    return 101, ""


async def test_owner_and_admin_get_the_dashboard_others_get_403(hub, running, tokens):
    async with httpx.AsyncClient() as http:
        for user in ("alice", "bob"):
            r = await http.get(dashboard_url(hub, "c1"), headers=auth(tokens[user]))
            assert r.status_code == 200, (user, r.text[:300])
            assert f"{PREFIX}clusters/c1/dashboard/static/js/bokeh.min.js" in r.text
        # a static file linked from the page loads through the same route
        script = re.search(r'src="([^"]*bokeh\.min\.js[^"]*)"', r.text).group(1)
        js = await http.get(hub.url + script, headers=auth(tokens["alice"]))
        assert js.status_code == 200 and len(js.content) > 100_000

        foreign = await http.get(dashboard_url(hub, "c1"), headers=auth(tokens["eve"]))
        unknown = await http.get(dashboard_url(hub, "no-such-cluster"), headers=auth(tokens["eve"]))
        assert foreign.status_code == unknown.status_code == 403
        assert foreign.json() == unknown.json() == {"error": "You may not use this cluster."}
        assert "Bokeh" not in foreign.text


async def test_missing_or_bad_credentials(hub, running, tokens):
    async with httpx.AsyncClient() as http:
        r = await http.get(dashboard_url(hub, "c1"), headers={"Accept": "application/json"})
        assert r.status_code == 401 and "error" in r.json()
        r = await http.get(dashboard_url(hub, "c1"), headers=auth("not-a-token"))
        assert r.status_code == 401
        # alice's own token, but without access to the service: identified, not allowed
        narrow = await hub.user_token("alice", scopes=["read:users:name!user=alice"])
        r = await http.get(dashboard_url(hub, "c1"), headers=auth(narrow))
        assert r.status_code == 403
        # a browser without a cookie is sent to the hub's OAuth login
        r = await http.get(dashboard_url(hub, "c1"), headers={"Accept": "text/html"})
        assert r.status_code == 302 and "/hub/api/oauth2/authorize" in r.headers["location"]


async def test_starting_is_503_with_retry_after_and_stopped_is_404(hub, service, tokens):
    service.clusters["c-start"] = Target("c-start", "alice", ClusterState.STARTING)
    service.clusters["c-stop"] = Target("c-stop", "alice", ClusterState.STOPPED)
    async with httpx.AsyncClient() as http:
        r = await http.get(dashboard_url(hub, "c-start"), headers=auth(tokens["alice"]))
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert "not up yet" in r.json()["error"]
        r = await http.get(dashboard_url(hub, "c-start"), headers={**auth(tokens["alice"]), "Accept": "text/html"})
        assert r.status_code == 503 and r.headers["content-type"].startswith("text/html") and "<h1>503" in r.text
        r = await http.get(dashboard_url(hub, "c-stop"), headers=auth(tokens["alice"]))
        assert r.status_code == 404 and "stopped" in r.json()["error"]
        # someone else learns nothing about either
        for cid in ("c-start", "c-stop"):
            r = await http.get(dashboard_url(hub, cid), headers=auth(tokens["eve"]))
            assert r.status_code == 403
    with pytest.raises(HTTPClientError) as e:
        await websocket_connect(HTTPRequest(comm_url(hub, "c-start"), headers=auth(tokens["alice"])))
    assert e.value.code == 503


async def test_bokeh_websocket_data_through_the_relay(hub, running, tokens):
    async with httpx.AsyncClient() as http:
        page = await http.get(dashboard_url(hub, "c1"), headers=auth(tokens["alice"]))
    session_token = re.search(r'"token":"([^"]+)"', page.text).group(1)
    ws_url = f"ws://127.0.0.1:{hub.port}{PREFIX}clusters/c1/dashboard/status/ws"

    with pytest.raises(HTTPClientError) as e:  # eve cannot open it, even with a valid session token
        await websocket_connect(HTTPRequest(ws_url, headers=auth(tokens["eve"])), subprotocols=["bokeh", session_token])
    assert e.value.code == 403

    ws = await websocket_connect(HTTPRequest(ws_url, headers=auth(tokens["alice"])), subprotocols=["bokeh", session_token])
    try:
        assert ws.selected_subprotocol == "bokeh"
        ack = [json.loads(await ws.read_message()) for _ in range(3)]
        assert ack[0]["msgtype"] == "ACK"
        for part in ({"msgid": "1", "msgtype": "PULL-DOC-REQ"}, {}, {}):
            await ws.write_message(json.dumps(part))
        for _ in range(100):  # the dashboard also pushes PATCH-DOC updates; find our reply among them
            header = json.loads(await ws.read_message())
            await ws.read_message()  # metadata
            content = json.loads(await ws.read_message())
            for _ in range(header.get("num_buffers", 0)):
                await ws.read_message()
            if header["msgtype"] == "PULL-DOC-REPLY":
                break
        assert header["msgtype"] == "PULL-DOC-REPLY"
        assert content["doc"]["roots"], "the dashboard document has no plots"
    finally:
        ws.close()


async def test_client_computes_through_the_hub_with_a_token(hub, running, tokens):
    async with Client(comm_url(hub, "c1"), security=hub_security(tokens["alice"]), asynchronous=True) as client:
        assert await client.submit(sum, [1, 2, 3]) == 6
        data = await client.scatter(b"x" * 20_000_000)  # bigger than one websocket shard
        assert len(await client.gather(data)) == 20_000_000
    assert await comm_answer(hub, "c1", tokens["alice"]) == (101, "")
    assert await comm_answer(hub, "c1", tokens["eve"]) == (403, "You may not use this cluster.")


async def test_worker_joins_through_the_hub_with_only_url_and_credential(hub, service, tokens, tmp_path):
    secret, digest = new_worker_credential()
    scheduler = await start_scheduler("c2")
    service.clusters["c2"] = target_for(scheduler, "c2", "alice", digest)
    env = {**os.environ, CREDENTIAL_ENV: secret}
    worker = subprocess.Popen(
        hub_worker_command(comm_url(hub, "c2"), "--nthreads", "1", "--no-dashboard", "--name", "outbound-1"),
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "worker.log", "wb"),
    )
    try:
        async with Client(comm_url(hub, "c2"), security=hub_security(tokens["alice"]), asynchronous=True) as client:
            await client.wait_for_workers(1, timeout=60)
            info = client.scheduler_info()["workers"]
            [(address, model)] = info.items()
            assert model["name"] == "outbound-1" and address.startswith("tcp://")  # worker-to-worker stays direct
            assert await client.submit(pow, 2, 10) == 1024
        assert secret not in (tmp_path / "worker.log").read_text()

        # the credential is no hub token, and a wrong one gets nobody in
        assert await comm_answer(hub, "c2", secret) == (101, "")
        assert await comm_answer(hub, "c2", secret[::-1]) == (401, UNAUTHENTICATED)
        assert await comm_answer(hub, "c1", secret) == (401, UNAUTHENTICATED)  # nor does it open another cluster
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        await scheduler.close()
        del service.clusters["c2"]


async def test_secrets_stay_out_of_logs_and_reprs(hub, running, tokens, caplog):
    secret, digest = new_worker_credential()
    target = replace(Target("x", "alice", ClusterState.RUNNING), worker_credential_sha256=digest)
    assert target.worker_credential_sha256 == digest  # held, but never shown
    assert digest not in repr(target) and secret not in repr(target)
    assert tokens["alice"] not in repr(hub_security(tokens["alice"]))
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient() as http:
        await http.get(dashboard_url(hub, "c1"), headers=auth(tokens["eve"]))
        await http.get(dashboard_url(hub, "c1"), headers=auth(secret))
    assert tokens["eve"] not in caplog.text and secret not in caplog.text
    assert "-> 403" in caplog.text  # the refusal itself is logged


async def test_stopping_a_cluster_removes_access(hub, service, tokens):
    scheduler = await start_scheduler("c3")
    service.clusters["c3"] = target_for(scheduler, "c3", "alice")
    async with httpx.AsyncClient() as http:
        assert (await http.get(dashboard_url(hub, "c3"), headers=auth(tokens["alice"]))).status_code == 200
        await scheduler.close()
        # the service has not noticed yet: the relay answers 503, never a stale page
        r = await http.get(dashboard_url(hub, "c3"), headers=auth(tokens["alice"]))
        assert r.status_code == 503
        service.clusters["c3"] = replace(service.clusters["c3"], state=ClusterState.STOPPED)
        assert (await http.get(dashboard_url(hub, "c3"), headers=auth(tokens["alice"]))).status_code == 404
    assert await comm_answer(hub, "c3", tokens["alice"]) == (404, "This cluster has stopped.")


async def wait_for_status(url: str, token: str, status: int, attempts: int = 200) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(attempts):
            try:
                if (await http.get(url, headers=auth(token))).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered {status}")


async def test_service_and_proxy_restarts_restore_access(hub, service, running, tokens):
    async with Client(comm_url(hub, "c1"), security=hub_security(tokens["alice"]), asynchronous=True) as client:
        assert await client.submit(abs, -1) == 1

        await service.stop()
        async with httpx.AsyncClient() as http:
            assert (await http.get(dashboard_url(hub, "c1"), headers=auth(tokens["alice"]))).status_code == 503
        service.start()  # a new process would rebuild the same resolver from its database
        await wait_for_status(dashboard_url(hub, "c1"), tokens["alice"], 200)
        assert await client.submit(abs, -2) == 2  # the client reconnected through the relay

        os.kill(hub.proxy_pid(), signal.SIGKILL)  # the hub restarts CHP and restores the service route
        await asyncio.sleep(0.5)
        await wait_for_status(dashboard_url(hub, "c1"), tokens["alice"], 200)
        assert await client.submit(abs, -3) == 3


async def test_browser_logs_in_through_hub_oauth_and_gets_the_dashboard(hub, running):
    async with httpx.AsyncClient(follow_redirects=True, timeout=60) as browser:
        r = await browser.get(dashboard_url(hub, "c1"), headers={"Accept": "text/html"})
        assert r.url.path == "/hub/login"  # sent to the hub to log in
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', r.text).group(1)
        r = await browser.post(r.url, data={"username": "alice", "password": "pw", "_xsrf": xsrf},
                               headers={"Accept": "text/html"})
        assert r.status_code == 200 and r.url.path == f"{PREFIX}clusters/c1/dashboard/status", r.url
        assert "bokeh.min.js" in r.text
        cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies.jar if c.path.startswith(PREFIX))

    session_token = re.search(r'"token":"([^"]+)"', r.text).group(1)
    ws_url = f"ws://127.0.0.1:{hub.port}{PREFIX}clusters/c1/dashboard/status/ws"
    same_site = {"Cookie": cookie, "Origin": hub.url}
    ws = await websocket_connect(HTTPRequest(ws_url, headers=same_site), subprotocols=["bokeh", session_token])
    assert json.loads(await ws.read_message())["msgtype"] == "ACK"
    ws.close()
    with pytest.raises(HTTPClientError) as e:  # another site cannot ride on the user's cookie
        await websocket_connect(HTTPRequest(ws_url, headers={**same_site, "Origin": "https://evil.example"}),
                                subprotocols=["bokeh", session_token])
    assert e.value.code == 403
