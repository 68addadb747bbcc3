"""The hubrev:// comm backend's own rules: addresses, and which hub answers end a connect at once.

(A raw TCP server plays the hub's answers here; tests/test_outbound_workers.py runs the real stack.)
"""

from __future__ import annotations

import asyncio

import pytest
from distributed.comm import connect
from distributed.comm.core import CommClosedError, FatalCommClosedError
from distributed.comm.registry import get_backend

from cmsaf_hub.reverse import HubBackend, HubLocation, hub_cluster_address, open_upgraded_stream


def test_addresses_through_the_hub():
    assert hub_cluster_address("wss://hub.example/services/cmsaf/clusters/abc/comm") == (
        "hubrevs://hub.example:443/services/cmsaf/clusters/abc")
    assert hub_cluster_address("ws://10.0.0.1:8000/services/cmsaf/clusters/abc/comm/") == (
        "hubrev://10.0.0.1:8000/services/cmsaf/clusters/abc")
    with pytest.raises(ValueError):
        hub_cluster_address("tls://10.0.0.5:8786")
    # the broker's own listener: the cluster's path on that host, TLS as its URL says
    comm_url = "wss://hub.example/services/cmsaf/clusters/abc/comm"
    assert hub_cluster_address(comm_url, "https://broker.hub.example:8443") == (
        "hubrevs://broker.hub.example:8443/services/cmsaf/clusters/abc")
    assert hub_cluster_address(comm_url, "http://10.0.0.2:9000") == "hubrev://10.0.0.2:9000/services/cmsaf/clusters/abc"
    with pytest.raises(ValueError, match="CMSAF_BROKER_URL must be http"):
        hub_cluster_address(comm_url, "broker.hub.example:8443")
    loc = HubLocation.parse("hub.example:443/services/cmsaf/clusters/abc/workers/w1", tls=True)
    assert (loc.host, loc.port, loc.path, loc.url()) == (
        "hub.example", 443, "/services/cmsaf/clusters/abc/workers/w1",
        "wss://hub.example:443/services/cmsaf/clusters/abc/workers/w1")
    # every Dask process finds the scheme through the entry point
    assert isinstance(get_backend("hubrev"), HubBackend)
    assert get_backend("hubrevs").get_address_host_port("hub.example:443/x/workers/w") == ("hub.example", 443)


async def answering(status: str, body: bytes = b'{"error": "You may not use this cluster."}'):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                     .encode() + body)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_a_refusal_ends_the_connect_at_once_and_a_busy_worker_is_retried():
    forbidden = await answering("403 Forbidden")
    busy = await answering("503 Service Unavailable", b'{"error": "not connected"}')
    try:
        port = forbidden.sockets[0].getsockname()[1]
        address = f"hubrev://127.0.0.1:{port}/services/cmsaf/clusters/abc/workers/w1"
        with pytest.raises(FatalCommClosedError) as e:  # no credentials at all: said before any connection
            await connect(address, timeout=20)
        assert str(e.value).startswith("a hubrev:// address needs credentials")
        with pytest.raises(FatalCommClosedError) as e:
            await connect(address, timeout=20, extra_conn_args={"headers": {"Authorization": "token t"}})
        assert "the hub refused /services/cmsaf/clusters/abc/workers/w1: 403 Forbidden (You may not use this cluster.)" in str(e.value)
        # 503 (worker reconnecting its control channel) is retryable: not a FatalCommClosedError
        location = HubLocation.parse(f"127.0.0.1:{busy.sockets[0].getsockname()[1]}/p", tls=False)
        with pytest.raises(CommClosedError) as e:
            await open_upgraded_stream(location, "/p", "token t", None, 5)
        assert not isinstance(e.value, FatalCommClosedError) and ": 503 Service Unavailable (not connected)" in str(e.value)
    finally:
        forbidden.close()
        busy.close()
