"""The in-session refresher's client side, against a real loopback HTTP server serving token JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import stat
import sys
import time

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from spawners.refresher import (
    RefresherConfig,
    RefreshError,
    RefreshPolicy,
    TokenRefresher,
    next_refresh_delay,
    retry_delay,
)

API_TOKEN = "hub-api-token-of-the-session"
FAST = RefreshPolicy(margin=1.0, min_delay=0.2, max_delay=30.0, retry_initial=0.1, retry_max=0.4)


class FakeIssuer:
    """Mints distinct fake tokens with a short life each time it is asked."""

    def __init__(self, lifetime: float = 2.0):
        self.lifetime = lifetime
        self.served: list[dict[str, str]] = []
        self.auth_headers: list[str] = []
        self.status = 200
        self.body: str | None = None
        self.asked = asyncio.Event()

    def reply(self) -> dict:
        n = len(self.served)
        tokens = {"condor": f"condor-jwt-{n}", "xrootd": f"xrootd-jwt-{n}"}
        self.served.append(tokens)
        expires_at = time.time() + self.lifetime
        return {
            "issuer": "https://iam.example/",
            "tokens": {
                name: {"access_token": jwt, "expires_at": expires_at, "audience": "aud", "scope": "s"}
                for name, jwt in tokens.items()
            },
        }


class TokensHandler(RequestHandler):
    def initialize(self, issuer: FakeIssuer):
        self.issuer = issuer

    def get(self):
        self.issuer.auth_headers.append(self.request.headers.get("Authorization", ""))
        self.issuer.asked.set()
        if self.request.headers.get("Authorization") != f"token {API_TOKEN}":
            self.set_status(403)
            self.finish({"error": "forbidden"})
            return
        if self.issuer.status != 200:
            self.set_status(self.issuer.status)
            self.finish({"error": "nope"})
            return
        self.set_header("Content-Type", "application/json")
        self.finish(self.issuer.body if self.issuer.body is not None else json.dumps(self.issuer.reply()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(issuer: FakeIssuer, port: int = 0) -> tuple[HTTPServer, int]:
    app = Application([(r"/services/cmsaf/api/v1/tokens", TokensHandler, {"issuer": issuer})])
    server = HTTPServer(app)
    sockets = bind_sockets(port, "127.0.0.1")
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


def make_config(port: int, token_dir, api_token: str = API_TOKEN) -> RefresherConfig:
    return RefresherConfig(
        service_url=f"http://127.0.0.1:{port}/services/cmsaf/",
        token_dir=str(token_dir),
        api_token=api_token,
        policy=FAST,
        request_timeout=5,
    )


async def wait_for(predicate, timeout: float = 30.0) -> None:
    """Poll ``predicate`` until true; fails the test (not a timing assertion) if it never is."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(refresher: TokenRefresher):
    task = asyncio.create_task(refresher.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def read_tokens(token_dir) -> dict[str, str]:
    return {
        name: (token_dir / name).read_text()
        for name in os.listdir(token_dir)
        if name.endswith(".token")
    }


@pytest.mark.parametrize(
    "remaining, expected",
    [(1000, 880), (3600, 1800), (60, 30), (100, 50), (10, 5), (1, 2.0), (-30, 2.0), (10**6, 1800)],
)
def test_next_refresh_delay(remaining, expected):
    policy = RefreshPolicy(margin=120, min_delay=2, max_delay=1800)
    assert next_refresh_delay(1000.0 + remaining, 1000.0, policy) == expected


def test_unknown_expiry_waits_max_delay():
    assert next_refresh_delay(None, 0.0, RefreshPolicy(max_delay=99)) == 99


def test_retry_delay_doubles_up_to_cap():
    policy = RefreshPolicy(retry_initial=1, retry_max=10)
    assert [retry_delay(n, policy) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_config_from_env_names_missing_variables_and_hides_token():
    with pytest.raises(ValueError, match="CMSAF_SERVICE_URL, JUPYTERHUB_API_TOKEN"):
        RefresherConfig.from_env({"CMSAF_TOKEN_DIR": "/t"})
    config = RefresherConfig.from_env(
        {"CMSAF_SERVICE_URL": "http://h/services/cmsaf", "CMSAF_TOKEN_DIR": "/t", "JUPYTERHUB_API_TOKEN": API_TOKEN}
    )
    assert config.tokens_url == "http://h/services/cmsaf/api/v1/tokens"
    assert API_TOKEN not in repr(config)


async def test_refresh_once_writes_0600_files_with_hub_token(tmp_path):
    issuer = FakeIssuer(lifetime=600)
    server, port = start_server(issuer)
    try:
        refresher = TokenRefresher(make_config(port, tmp_path))
        expires_at = await refresher.refresh_once()
    finally:
        server.stop()
    assert issuer.auth_headers == [f"token {API_TOKEN}"]
    assert read_tokens(tmp_path) == {"condor.token": "condor-jwt-0\n", "xrootd.token": "xrootd-jwt-0\n"}
    for name in ("condor.token", "xrootd.token"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert expires_at == pytest.approx(time.time() + 600, abs=30)


@pytest.mark.parametrize(
    "status, body, message",
    [
        (403, None, "answered 403"),
        (200, "not json", "reply rejected"),
        (200, json.dumps({"issuer": "x"}), "reply rejected: token endpoint reply has no 'tokens'"),
        (200, json.dumps({"tokens": {"condor": {"expires_at": 1}}}), "no access_token"),
    ],
)
async def test_bad_replies_raise_and_leave_files_alone(tmp_path, status, body, message):
    issuer = FakeIssuer()
    issuer.status, issuer.body = status, body
    server, port = start_server(issuer)
    (tmp_path / "condor.token").write_text("old\n")
    try:
        with pytest.raises(RefreshError, match=message):
            await TokenRefresher(make_config(port, tmp_path)).refresh_once()
    finally:
        server.stop()
    assert read_tokens(tmp_path) == {"condor.token": "old\n"}


async def test_expired_tokens_from_the_service_count_as_a_failure(tmp_path):
    issuer = FakeIssuer(lifetime=-5)  # the hub could not refresh them (IdP down)
    server, port = start_server(issuer)
    (tmp_path / "condor.token").write_text("old\n")
    try:
        with pytest.raises(RefreshError, match=r"returned tokens expired \d+s ago"):
            await TokenRefresher(make_config(port, tmp_path)).refresh_once()
    finally:
        server.stop()
    assert read_tokens(tmp_path) == {"condor.token": "old\n"}


async def test_wrong_hub_token_is_refused(tmp_path):
    issuer = FakeIssuer()
    server, port = start_server(issuer)
    try:
        with pytest.raises(RefreshError, match="403"):
            await TokenRefresher(make_config(port, tmp_path, api_token="someone-else")).refresh_once()
    finally:
        server.stop()


async def test_files_replaced_before_expiry_over_several_cycles(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="cmsaf.refresher")
    issuer = FakeIssuer(lifetime=2.0)
    server, port = start_server(issuer)
    refresher = TokenRefresher(make_config(port, tmp_path))
    try:
        async with running(refresher):
            await wait_for(lambda: len(issuer.served) >= 4)
            await wait_for(lambda: refresher.refreshed >= 4)
    finally:
        server.stop()
    latest = read_tokens(tmp_path)["condor.token"]
    assert latest.startswith("condor-jwt-") and int(latest.split("-")[-1]) >= 3
    assert refresher.failures == 0
    for served in issuer.served:
        for jwt in served.values():
            assert jwt not in caplog.text
    assert "updated condor.token, xrootd.token" in caplog.text


async def test_backs_off_while_service_is_down_then_recovers(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cmsaf.refresher")
    port = free_port()
    refresher = TokenRefresher(make_config(port, tmp_path))
    issuer = FakeIssuer(lifetime=600)
    async with running(refresher):
        await wait_for(lambda: refresher.failures >= 3)
        assert read_tokens(tmp_path) == {}
        assert "unreachable" in caplog.text and "retrying in" in caplog.text
        server, _ = start_server(issuer, port)
        try:
            await wait_for(lambda: refresher.refreshed >= 1)
        finally:
            server.stop()
    assert refresher.failures == 0
    assert read_tokens(tmp_path) == {"condor.token": "condor-jwt-0\n", "xrootd.token": "xrootd-jwt-0\n"}
    delays = [float(r.getMessage().rsplit(" ", 1)[1].rstrip("s")) for r in caplog.records if "retrying in" in r.getMessage()]
    assert delays[:3] == [0.1, 0.2, 0.4] and max(delays) == 0.4
    assert API_TOKEN not in caplog.text


async def test_refresher_as_a_process_like_the_kubernetes_sidecar(tmp_path):
    issuer = FakeIssuer(lifetime=600)
    server, port = start_server(issuer)
    env = dict(os.environ)
    env.update(
        CMSAF_SERVICE_URL=f"http://127.0.0.1:{port}/services/cmsaf/",
        CMSAF_TOKEN_DIR=str(tmp_path / "tokens"),
        JUPYTERHUB_API_TOKEN=API_TOKEN,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spawners.refresher", env=env, stderr=asyncio.subprocess.PIPE
    )
    logged = []
    try:
        while not any("updated condor.token, xrootd.token" in line for line in logged):
            line = await asyncio.wait_for(proc.stderr.readline(), 60)
            assert line, "refresher exited: " + "".join(logged)
            logged.append(line.decode())
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 30)
        server.stop()
    assert proc.returncode == 0
    assert stat.S_IMODE((tmp_path / "tokens").stat().st_mode) == 0o700
    assert read_tokens(tmp_path / "tokens")["xrootd.token"] == "xrootd-jwt-0\n"
    assert API_TOKEN not in "".join(logged) + (await proc.stderr.read()).decode()


async def test_refresher_process_without_settings_exits_2():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMSAF_", "JUPYTERHUB_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spawners.refresher", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "needs CMSAF_SERVICE_URL, CMSAF_TOKEN_DIR, JUPYTERHUB_API_TOKEN" in stderr.decode()
