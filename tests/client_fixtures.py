"""Fixtures shared by the client, CLI and labextension tests: a loopback JSON server answering the
service's /options, and a real ws:// scheduler with one worker. Import them into a test module."""

from __future__ import annotations

import pytest
from distributed import Scheduler, Worker

from tests.test_client_http import API, OPTIONS_SCHEMA, JSONServer


@pytest.fixture
def server():
    s = JSONServer()
    s.start()
    s.routes[("GET", API + "options")] = (200, OPTIONS_SCHEMA)
    yield s
    s.stop()


@pytest.fixture
async def scheduler():
    async with Scheduler(protocol="ws", host="127.0.0.1", port=0, dashboard_address=":0") as s:
        async with Worker(s.address, nthreads=1):
            yield s
