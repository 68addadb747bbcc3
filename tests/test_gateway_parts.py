"""The dask-gateway compatibility's pure parts: SNI routing on real ClientHellos, the option
specification as the real dask-gateway client parses it, and status names."""

from __future__ import annotations

import socket
import ssl

import pytest
from dask_gateway.client import ClusterStatus as ClientStatus
from dask_gateway.options import Options
from tornado.iostream import IOStream

from cmsaf_hub.service.gateway.api import GATEWAY_STATUS, gateway_options, option_spec
from cmsaf_hub.service.gateway.sni import NotAClientHello, cluster_name, read_client_hello, server_name
from cmsaf_hub.service.models import ClusterStatus
from cmsaf_hub.service.options import DEFAULT_FIELDS, OptionField


def client_hello(server_hostname: str | None) -> bytes:
    """The first flight Python's TLS client (OpenSSL) sends, as the dask-gateway client's would."""
    context = ssl.create_default_context()
    context.check_hostname = False
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def hello_through_a_socket(data: bytes) -> tuple[bytes, bytes]:
    near, far = socket.socketpair()
    with near:
        stream = IOStream(far)
        near.sendall(data)
        try:
            return await read_client_hello(stream)
        finally:
            stream.close()


async def test_the_cluster_name_comes_from_a_real_client_hellos_sni():
    data = client_hello("daskgateway-0123abcd")
    raw, hello = await hello_through_a_socket(data)
    assert raw == data  # everything read is passed on to the scheduler unchanged
    assert server_name(hello) == "daskgateway-0123abcd"
    assert cluster_name(server_name(hello)) == "0123abcd"


async def test_client_hellos_without_our_sni_and_other_protocols_are_not_routed():
    _, hello = await hello_through_a_socket(client_hello(None))
    assert server_name(hello) is None
    _, hello = await hello_through_a_socket(client_hello("hub.example"))
    assert cluster_name(server_name(hello)) is None
    assert cluster_name("daskgateway-") is None
    with pytest.raises(NotAClientHello, match="not a TLS handshake"):
        await hello_through_a_socket(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(NotAClientHello, match="malformed ClientHello"):
        server_name(b"\x01\x00\x00\x05\x03\x03")


def test_the_option_specification_parses_in_the_real_client_and_maps_back():
    fields = [OptionField.from_config(f) for f in DEFAULT_FIELDS]
    specs = [s for s in map(option_spec, fields) if s is not None]
    # image and site offer no choice by default: not shown
    assert [s["field"] for s in specs] == ["workers", "cores", "memory"]
    options = Options._from_spec(specs)
    assert dict(options) == {"workers": 0, "cores": 1, "memory": 2.0}
    options.cores = 4
    with pytest.raises(ValueError):
        options.cores = 99  # the client enforces the service's bounds before sending
    assert gateway_options(fields, dict(options)) == {"workers": 0, "cores": 4, "memory": 2.0}

    site = OptionField("site", "string", None, nullable=True, choices=(None, "T2_US_Purdue"))
    assert option_spec(site)["spec"] == {"type": "select", "options": [None, "T2_US_Purdue"]}
    free_text = OptionField("note", "string", None, nullable=True)
    assert Options._from_spec([option_spec(free_text)]).note == ""
    assert gateway_options([free_text], {"note": ""}) == {"note": None}  # "" stands for unset


def test_every_status_has_a_dask_gateway_name():
    assert set(GATEWAY_STATUS) == set(ClusterStatus)
    assert {ClientStatus.from_name(name) for name in GATEWAY_STATUS.values()} == set(ClientStatus)
