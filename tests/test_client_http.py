"""The client's HTTP behaviour against a small real loopback server that answers canned JSON.

This checks what the client sends and how it maps answers to errors; the service's own logic is
tested by the service's tests and by the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from cmsaf_hub.client import (
    AuthenticationError,
    ClusterNotFoundError,
    Hub,
    HubError,
    HubUnreachableError,
    OptionsError,
    RequestRejectedError,
    ServiceError,
)
from cmsaf_hub.client.config import HubConfig
from cmsaf_hub.client.http import ServiceAPI, error_message
from tests.client_fixtures import API, OPTIONS_SCHEMA, TOKEN, JSONServer, cluster_json, server  # noqa: F401 (fixture)

async def test_sends_token_header_and_json_body(server):
    server.routes[("POST", API + "clusters/c1/scale")] = (200, cluster_json())
    api = ServiceAPI(server.config())
    report = await api.scale("c1", 5)
    api.close()
    assert report["id"] == "c1"
    (req,) = server.requests
    assert req.headers["Authorization"] == f"token {TOKEN}"
    assert json.loads(req.body) == {"workers": 5}


async def test_long_poll_query_and_quoted_ids(server):
    server.routes[("GET", API + "clusters/a%2Fb")] = (200, cluster_json("a/b"))
    api = ServiceAPI(server.config())
    await api.get_cluster("a/b", wait=20, status="pending")
    api.close()
    (req,) = server.requests
    assert req.path == API + "clusters/a%2Fb"
    assert req.query == "wait=20&status=pending"


@pytest.mark.parametrize(
    "status, payload, error_type, message",
    [
        (400, {"error": "option 'cores' must be at most 8"}, RequestRejectedError, "option 'cores' must be at most 8"),
        (409, {"error": "quota exceeded: 40 cores of 32"}, RequestRejectedError, "quota exceeded: 40 cores of 32"),
        (422, {"error": "bad body"}, RequestRejectedError, "bad body"),
        (401, {"error": "invalid token"}, AuthenticationError, "invalid token"),
        # the hub's own error format (raw bytes: the service's OpenAPI contract does not cover the hub)
        (403, json.dumps({"message": "Forbidden"}).encode(), AuthenticationError, "Forbidden"),
        (404, {"error": "no cluster c9"}, ClusterNotFoundError, "no cluster c9"),
        (500, {"error": "database locked"}, ServiceError, "database locked"),
        (502, b"<html>Bad gateway</html>", ServiceError, "HTTP 502: Bad Gateway"),
        (503, b"", ServiceError, "HTTP 503: Service Unavailable"),
        (302, None, AuthenticationError, "the service redirected to a login page: the token was not accepted"),
    ],
)
async def test_http_errors_map_to_types_with_the_services_message(server, status, payload, error_type, message):
    server.routes[("GET", API + "clusters/c9")] = (status, payload, {"Location": "/hub/login"})
    api = ServiceAPI(server.config())
    with pytest.raises(error_type) as info:
        await api.get_cluster("c9")
    api.close()
    assert str(info.value) == message
    assert info.value.status == status
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value)


async def test_unreachable_hub_is_one_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = ServiceAPI(HubConfig(service_url=f"http://127.0.0.1:{port}/services/cmsaf/", token=TOKEN))
    with pytest.raises(HubUnreachableError) as info:
        await api.list_clusters()
    api.close()
    assert str(info.value).startswith(f"cannot reach http://127.0.0.1:{port}/services/cmsaf/")
    assert TOKEN not in str(info.value)


def test_error_message_fallbacks():
    assert error_message(500, "Internal Server Error", b"not json") == "HTTP 500: Internal Server Error"
    assert error_message(400, None, b'{"error": ""}') == "HTTP 400: error"
    assert error_message(400, None, b"[1, 2]") == "HTTP 400: error"


def test_sync_hub_lists_submits_and_validates(server):
    server.routes[("GET", API + "options")] = (200, OPTIONS_SCHEMA)
    server.routes[("GET", API + "clusters")] = (200, [cluster_json("c1"), cluster_json("c2", "pending")])
    server.routes[("POST", API + "clusters")] = (201, cluster_json("c3", "pending"))
    with Hub(config=server.config()) as hub:
        reports = hub.list_clusters()
        assert [(r.id, r.status, r.workers.pending) for r in reports] == [
            ("c1", "running", 1),
            ("c2", "pending", 1),
        ]
        assert hub.submit(workers=3).id == "c3"
        with pytest.raises(OptionsError, match="invalid value 99 for option 'cores': must be an integer from 1 to 8"):
            hub.submit(cores=99)
    posts = [r for r in server.requests if r.method == "POST"]
    assert len(posts) == 1  # the invalid request never left the client
    assert json.loads(posts[0].body) == {"options": {"workers": 3}}
    assert TOKEN not in repr(hub)


async def test_async_hub_waits_for_running_and_reports_failure(server):
    server.routes[("GET", API + "clusters/c1")] = [
        (200, cluster_json("c1", "pending")),
        (200, cluster_json("c1", "starting")),
        (200, cluster_json("c1", "running")),
    ]
    server.routes[("GET", API + "clusters/bad")] = [
        (200, cluster_json("bad", "starting")),
        (200, cluster_json("bad", "failed", reason="scheduler exited with code 1")),
    ]
    async with Hub(config=server.config(), asynchronous=True) as hub:
        report = await hub.wait_for_cluster("c1")
        assert report.status == "running"
        with pytest.raises(HubError, match="^cluster bad failed: scheduler exited with code 1$"):
            await hub.wait_for_cluster("bad")
    polls = [r.query for r in server.requests if r.path == API + "clusters/c1"]
    assert polls == ["", "wait=20&status=pending", "wait=20&status=starting"]


async def test_a_hub_that_never_answers_is_unreachable_after_the_timeout():
    with socket.socket() as silent:  # accepts connections (kernel backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/services/cmsaf/"
        api = ServiceAPI(HubConfig(service_url=url, token=TOKEN, request_timeout=0.5))
        with pytest.raises(HubUnreachableError, match=f"^no answer from {url}: Timeout"):
            await api.list_clusters()
        api.close()
