"""The client tests' fakes: a loopback JSON server answering canned service replies, and a real ws://
scheduler with one worker. Import the fixtures into a test module.

Every canned reply is checked against the service's own OpenAPI document
(:func:`cmsaf_hub.service.api.openapi.openapi_document`): a fake that answers something the real
service never would fails the test that served it.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import pytest
from distributed import Scheduler, Worker
from tornado import httpserver, web
from tornado.ioloop import IOLoop

from cmsaf_hub.client.config import HubConfig
from cmsaf_hub.service.api.openapi import openapi_document
from cmsaf_hub.service.options import ClusterOptions, fields_schema

API = "/services/cmsaf/api/v1/"

TOKEN = "tok-7f3a9c-secret"

OPTIONS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "workers": {"type": "integer", "minimum": 0, "maximum": 50},
        "cores": {"type": "integer", "minimum": 1, "maximum": 8},
    },
}


def cluster_json(cid: str = "c1", status: str = "running", **extra) -> dict:
    return {
        "id": cid,
        "owner": "alice",
        "options": {"workers": 2, "cores": 1},
        "status": status,
        "reason": None,
        "dashboard_link": f"http://127.0.0.1/services/cmsaf/clusters/{cid}/dashboard/status",
        "scheduler_address": f"ws://127.0.0.1/services/cmsaf/clusters/{cid}/comm",
        "workers": {"requested": 2, "pending": 1, "running": 1, "held": 0, "failed": 0, "held_reasons": []},
        "adapt": None,
        "created": "2026-11-25T11:00:00Z",
        "started": None,
        "stopped": None,
        **extra,
    }


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict
    body: bytes


@dataclass
class JSONServer:
    """A tornado server on 127.0.0.1 in its own thread, answering ``routes[(method, path)]``.

    A route's value is ``(status, payload)`` with a JSON-able payload, or ``(status, bytes)``, or a
    list of those to answer successive calls in turn.
    """

    routes: dict = field(default_factory=dict)
    requests: list = field(default_factory=list)
    #: Replies that break the service's OpenAPI document: "<METHOD> <path> <status>: why".
    violations: list = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/cmsaf/"

    def config(self, token: str = TOKEN) -> HubConfig:
        return HubConfig(service_url=self.url, token=token)

    def start(self) -> None:
        server_ref = self

        class Handler(web.RequestHandler):
            SUPPORTED_METHODS = ("GET", "POST", "DELETE")

            def _answer(self):
                req = self.request
                server_ref.requests.append(
                    Recorded(req.method, req.path, req.query, dict(req.headers), req.body)
                )
                answer = server_ref.routes.get((req.method, req.path), (404, {"error": "no route"}))
                if isinstance(answer, list):
                    answer = answer.pop(0) if len(answer) > 1 else answer[0]
                status, payload = answer[0], answer[1]
                if not isinstance(payload, bytes):
                    problem = CONTRACT.violation(req.method, req.path, status, payload)
                    if problem:
                        server_ref.violations.append(f"{req.method} {req.path} {status}: {problem}")
                self.set_status(status)
                if len(answer) > 2:
                    for k, v in answer[2].items():
                        self.set_header(k, v)
                if isinstance(payload, bytes):
                    self.finish(payload)
                elif payload is not None:
                    self.set_header("Content-Type", "application/json")
                    self.finish(json.dumps(payload))
                else:
                    self.finish()

            get = post = delete = _answer

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(asyncio.new_event_loop())
            self._loop = IOLoop.current()
            self._server = httpserver.HTTPServer(web.Application([(r".*", Handler)]))
            self._server.listen(self.port, "127.0.0.1")
            ready.set()
            self._loop.start()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        def shutdown():
            self._server.stop()
            self._loop.stop()

        self._loop.add_callback(shutdown)
        self._thread.join(10)


class OpenAPIContract:
    """What the service's OpenAPI document allows a reply to be, per method, path and status."""

    def __init__(self, document: dict[str, Any], api_prefix: str):
        self.document, self.prefix = document, api_prefix.rstrip("/")
        self.paths = [(re.compile("^" + re.sub(r"\{[^/]+\}", "[^/]+", p) + "$"), ops)
                      for p, ops in document["paths"].items()]

    def violation(self, method: str, path: str, status: int, payload: Any) -> str | None:
        """Why this reply is not one the service documents, or None. Statuses the document does not
        list for the operation (a proxy's 502, a hub's 302) are not the service's and are not checked."""
        if not path.startswith(self.prefix + "/"):
            return None
        operations = next((ops for pattern, ops in self.paths if pattern.match(path[len(self.prefix):])), None)
        if operations is None or method.lower() not in operations:
            return "no such operation in the OpenAPI document"
        responses = operations[method.lower()]["responses"]
        described = responses.get(str(status))
        if described is None:
            return "a success the document does not list" if 200 <= status < 300 else None
        schema = described.get("content", {}).get("application/json", {}).get("schema")
        if schema is None:
            return None
        try:
            jsonschema.Draft202012Validator({**schema, "components": self.document["components"]}).validate(payload)
        except jsonschema.ValidationError as e:
            return f"{e.message} (at {'/'.join(map(str, e.absolute_path)) or 'the top'})"
        return None


#: The document the real service serves, with its default cluster options.
CONTRACT = OpenAPIContract(
    openapi_document(fields_schema(ClusterOptions().for_groups([])), "services/cmsaf"), API)


@pytest.fixture
def server():
    s = JSONServer()
    s.start()
    s.routes[("GET", API + "options")] = (200, OPTIONS_SCHEMA)
    yield s
    s.stop()
    assert not s.violations, f"canned replies the real service would never give: {s.violations}"


@pytest.fixture
async def scheduler():
    async with Scheduler(protocol="ws", host="127.0.0.1", port=0, dashboard_address=":0") as s:
        async with Worker(s.address, nthreads=1):
            yield s
