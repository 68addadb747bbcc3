"""The forwarder's pure parts: access rules, credentials, URL building, handshake rewriting, and the
client/worker comm helpers (no processes started)."""

from __future__ import annotations

import pytest
from distributed.comm import get_address_host, get_local_address_for, resolve_address
from distributed.security import Security
from tornado.httputil import HTTPHeaders

from cmsaf_hub import comm
from cmsaf_hub.service.forwarder import (
    ClusterState,
    Decision,
    Target,
    comm_path,
    credential_matches,
    dashboard_prefix,
    decide,
    new_worker_credential,
    owner_or_admin,
)
from cmsaf_hub.service.forwarder.handlers import upstream_ws_url
from cmsaf_hub.service.forwarder.splice import Upstream, handshake_request

ALICE = {"name": "alice", "admin": False}
BOB_ADMIN = {"name": "bob", "admin": True}
EVE = {"name": "eve", "admin": False}


def target(state: ClusterState = ClusterState.RUNNING, digest: str | None = None) -> Target:
    return Target("c1", "alice", state, "ws://127.0.0.1:1", "http://127.0.0.1:2", worker_credential_sha256=digest)


@pytest.mark.parametrize(
    ("cluster", "user", "expected"),
    [
        (target(), ALICE, Decision.ALLOW),
        (target(), BOB_ADMIN, Decision.ALLOW),
        (target(), EVE, Decision.FORBIDDEN),
        (None, EVE, Decision.FORBIDDEN),  # unknown looks exactly like foreign
        (None, ALICE, Decision.FORBIDDEN),
        (target(), None, Decision.UNAUTHENTICATED),
        (None, None, Decision.UNAUTHENTICATED),
        (target(ClusterState.STARTING), ALICE, Decision.NOT_READY),
        (target(ClusterState.STOPPED), ALICE, Decision.GONE),
        (target(ClusterState.STARTING), EVE, Decision.FORBIDDEN),  # others learn nothing about state
        (target(ClusterState.STOPPED), EVE, Decision.FORBIDDEN),
    ],
)
def test_access_rules(cluster, user, expected):
    assert decide(cluster, user, owner_or_admin) is expected


def test_worker_credential_opens_only_its_running_cluster():
    secret, digest = new_worker_credential()
    running, stopped = target(digest=digest), target(ClusterState.STOPPED, digest)
    assert credential_matches(running, secret)
    assert decide(running, None, owner_or_admin, worker_credential_ok=True) is Decision.ALLOW
    assert decide(stopped, None, owner_or_admin, worker_credential_ok=True) is Decision.GONE
    assert not credential_matches(running, secret + "x")
    assert not credential_matches(target(), secret)  # a cluster without a credential
    assert not credential_matches(None, secret)
    assert not credential_matches(running, None)
    other_secret, _ = new_worker_credential()
    assert not credential_matches(running, other_secret)
    assert digest not in repr(running) and secret not in repr(running)


def test_custom_authorization_callback():
    groups = {"alice": {"cms"}, "carol": {"cms"}}

    def same_group(user, t):
        return bool(groups.get(user["name"], set()) & groups.get(t.owner, set()))

    assert decide(target(), {"name": "carol"}, same_group) is Decision.ALLOW
    assert decide(target(), EVE, same_group) is Decision.FORBIDDEN


def test_public_paths():
    assert dashboard_prefix("/services/cmsaf/", "abc") == "/services/cmsaf/clusters/abc/dashboard"
    assert dashboard_prefix("services/cmsaf", "abc") == "/services/cmsaf/clusters/abc/dashboard"
    assert comm_path("/services/cmsaf/", "abc") == "/services/cmsaf/clusters/abc/comm"
    assert upstream_ws_url("http://10.0.0.5:8787/", "/p/status/ws?x=1") == "ws://10.0.0.5:8787/p/status/ws?x=1"
    assert upstream_ws_url("https://10.0.0.5:8787", "/p/ws") == "wss://10.0.0.5:8787/p/ws"


def test_upgrade_handshake_keeps_websocket_headers_and_drops_hub_credentials():
    headers = HTTPHeaders()
    for name, value in [
        ("Host", "hub.example"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", "bokeh, tok"), ("Authorization", "token hub-secret"),
        ("Cookie", "jupyterhub-services=cookie-secret"),
    ]:
        headers.add(name, value)
    head = handshake_request(Upstream("wss://10.0.0.5:8786/x/ws?y=1"), "GET", headers).decode()
    lines = head.split("\r\n")
    assert lines[0] == "GET /x/ws?y=1 HTTP/1.1" and lines[1] == "Host: 10.0.0.5:8786"
    assert head.endswith("\r\n\r\n")
    forwarded = {line.split(": ", 1)[0].lower(): line.split(": ", 1)[1] for line in lines[1:] if ": " in line}
    assert forwarded["upgrade"] == "websocket" and forwarded["sec-websocket-key"] == "dGhlIHNhbXBsZSBub25jZQ=="
    assert forwarded["sec-websocket-protocol"] == "bokeh, tok" and forwarded["sec-websocket-version"] == "13"
    assert "hub-secret" not in head and "cookie-secret" not in head and "hub.example" not in head
    assert Upstream("wss://h:1/").parts == ("h", 1, "/", True)
    assert Upstream("ws://h/").parts == ("h", 80, "/", False)


def test_hub_addresses_with_paths_parse():
    comm.install_nodelay_ws()
    address = "ws://127.0.0.1:8000/services/cmsaf/clusters/x/comm"
    assert get_address_host(address) == "127.0.0.1"
    assert resolve_address(address) == address
    assert get_local_address_for(address) == "ws://127.0.0.1"
    assert get_address_host("wss://127.0.0.1:443/services/cmsaf/clusters/x/comm") == "127.0.0.1"


def test_client_security_carries_the_token_without_showing_it():
    security = comm.hub_security("tok-123")
    args = security.get_connection_args("client")
    assert args["extra_conn_args"]["headers"] == {"Authorization": "token tok-123"}
    assert "tok-123" not in repr(security)
    assert comm.hub_connection_args("tok-9")["extra_conn_args"]["headers"]["Authorization"] == "token tok-9"


def test_worker_preload_reads_the_credential_and_sets_the_header(tmp_path, monkeypatch):
    class Server:  # what dask_setup touches on a Worker or Nanny: its Security
        def __init__(self) -> None:
            self.security = Security()

    monkeypatch.delenv(comm.CREDENTIAL_ENV, raising=False)
    monkeypatch.delenv(comm.CREDENTIAL_FILE_ENV, raising=False)
    with pytest.raises(RuntimeError, match=comm.CREDENTIAL_ENV):
        comm.dask_setup(Server())

    (tmp_path / "cred").write_text("from-file\n")
    monkeypatch.setenv(comm.CREDENTIAL_FILE_ENV, str(tmp_path / "cred"))
    server = Server()
    shared = server.security.get_connection_args("worker")  # pools hold this dict before the preload runs
    comm.dask_setup(server)
    assert shared["extra_conn_args"]["headers"] == {"Authorization": "token from-file"}

    monkeypatch.setenv(comm.CREDENTIAL_ENV, "from-env")
    assert comm.read_worker_credential() == "from-env"


def test_worker_command_keeps_the_credential_off_the_command_line():
    cmd = comm.hub_worker_command("wss://hub/services/cmsaf/clusters/x/comm", "--nthreads", "2")
    assert cmd[1:4] == ["-m", "distributed.cli.dask_worker", "wss://hub/services/cmsaf/clusters/x/comm"]
    assert cmd[cmd.index("--protocol") + 1] == "tcp"
    assert "cmsaf_hub.comm" in cmd and cmd[-2:] == ["--nthreads", "2"]


# --- the fast path (hub:// and hubs://) -----------------------------------------------------------


def test_fast_addresses_are_built_from_the_public_url_with_explicit_ports():
    from cmsaf_hub.service.forwarder import fast_address, tls_path

    assert tls_path("/services/cmsaf/", "c1") == "/services/cmsaf/clusters/c1/tls"
    assert fast_address("https://hub.example/services/cmsaf/", "c1") == "hubs://hub.example:443/services/cmsaf/clusters/c1/tls"
    assert fast_address("http://127.0.0.1:8000/services/cmsaf/", "c1") == "hub://127.0.0.1:8000/services/cmsaf/clusters/c1/tls"
    assert fast_address("/services/cmsaf/", "c1") is None  # host-relative links: no address to dial


def test_fast_addresses_parse_and_resolve_through_distributed():
    loc = "hub.example:443/services/cmsaf/clusters/c1/tls"
    assert comm.split_hub_address(loc, tls=True) == ("hub.example", 443, "/services/cmsaf/clusters/c1/tls")
    assert comm.split_hub_address("hub.example/services/cmsaf/clusters/c1/tls", tls=True)[1] == 443
    assert comm.split_hub_address("hub.example/services/cmsaf/clusters/c1/tls", tls=False)[1] == 80
    with pytest.raises(ValueError, match="not a hub cluster address"):
        comm.split_hub_address("hub.example:443/services/cmsaf/clusters/c1/comm", tls=True)
    # a worker or nanny given such an address picks its own listen host from it
    assert get_address_host("hubs://127.0.0.1:443/services/cmsaf/clusters/c1/tls") == "127.0.0.1"
    assert resolve_address("hub://localhost:80/services/cmsaf/clusters/c1/tls") == (
        "hub://127.0.0.1:80/services/cmsaf/clusters/c1/tls")
    assert get_local_address_for("hubs://127.0.0.1:443/services/cmsaf/clusters/c1/tls").startswith("hubs://127.0.0.1")


def test_the_101_answer_is_checked_against_rfc6455():
    # RFC 6455 section 1.3's example key and answer
    assert comm.websocket_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    request = comm.upgrade_request("hub", 443, "/p/tls", "k==", {"Authorization": "token t"}).decode()
    assert request.startswith("GET /p/tls HTTP/1.1\r\nHost: hub:443\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
    assert request.endswith("Authorization: token t\r\n\r\n")


def test_hub_refusals_name_the_status_and_the_services_message():
    fatal = comm.refusal(403, "Forbidden", b'{"error": "You may not use this cluster."}', "hub://h:1/p/tls")
    assert isinstance(fatal, comm.HubRefusedFatal) and isinstance(fatal, OSError)
    assert str(fatal) == "the hub refused hub://h:1/p/tls: 403 You may not use this cluster."
    retry = comm.refusal(503, "Service Unavailable", b"<html>", "hub://h:1/p/tls")
    assert not isinstance(retry, comm.HubRefusedFatal)  # a starting cluster: distributed retries
    assert str(retry) == "the hub refused hub://h:1/p/tls: 503 Service Unavailable"


def test_fast_path_target_keeps_the_key_out_of_repr():
    t = Target("c1", "alice", ClusterState.RUNNING, tls_pem=("CERT", "SECRET-KEY"), scheduler_tls_address="tls://x:1")
    assert "SECRET-KEY" not in repr(t) and "tls://x:1" in repr(t)
