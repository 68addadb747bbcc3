"""IAMAuthenticator's refresh, exchange and discovery logic against a small real OIDC server on loopback.

The server signs real JWTs with a key generated here, rotates refresh tokens, implements the RFC 8693
grant and can be told to fail in the ways IAM fails (5xx, invalid_grant, one audience refused, down).
The end-to-end tests with the dev IAM and a real hub are in test_authenticator_hub.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import REGISTRY
from tornado import httpserver, web

from authenticators.discovery import DiscoveryFailed
from authenticators.exchange import TOKEN_EXCHANGE_GRANT
from authenticators.iam import IAMAuthenticator

CLIENT_ID, CLIENT_SECRET = "cmsaf-hub", "hub-client-secret-value"
EXCHANGES = {
    "condor": {"audience": "https://wlcg.cern.ch/jwt/v1/any", "scope": "compute.read compute.create"},
    "xrootd": {"audience": "https://xrootd.test:1094", "scope": "storage.read:/"},
}


@dataclass
class MiniIdP:
    """Discovery, JWKS and a token endpoint with refresh-token rotation and token exchange."""

    lifetime: int = 600
    groups: list[str] = field(default_factory=lambda: ["/cms"])
    refresh_mode: str = "ok"  # ok | 500 | invalid_grant
    refused_audiences: set[str] = field(default_factory=set)
    refresh_delay: float = 0.0
    announced_issuer: str = ""
    calls: dict[str, int] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.live_refresh_tokens: set[str] = set()
        self.server: httpserver.HTTPServer | None = None
        self.port = 0

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def jwt(self, **claims) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "sub": "sub-alice", "iat": now, "exp": now + self.lifetime, "jti": secrets.token_hex(8), **claims}
        token = jwt.encode(body, self.key, algorithm="RS256", headers={"kid": "k1"})
        self.issued.append(token)
        return token

    def token_set(self, username: str = "alice") -> dict:
        refresh = secrets.token_urlsafe(24)
        self.live_refresh_tokens.add(refresh)
        self.issued.append(refresh)
        return {
            "access_token": self.jwt(aud=CLIENT_ID, scope="openid profile wlcg wlcg.groups", **{"wlcg.groups": self.groups}),
            "id_token": self.jwt(aud=CLIENT_ID, preferred_username=username),
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": self.lifetime,
        }

    def auth_state_for_login(self, username: str = "alice", **overrides) -> dict:
        tokens = self.token_set(username)
        return {**tokens, "token_response": tokens, "access_token_expires_at": jwt.decode(
            tokens["access_token"], options={"verify_signature": False})["exp"], "exchanged_tokens": {}, **overrides}

    async def start(self) -> None:
        idp = self

        class Discovery(web.RequestHandler):
            def get(self):
                base = idp.issuer
                self.write({"issuer": idp.announced_issuer or base, "authorization_endpoint": base + "authorize", "token_endpoint": base + "token",
                            "jwks_uri": base + "jwk", "userinfo_endpoint": base + "userinfo",
                            "grant_types_supported": ["authorization_code", "refresh_token", TOKEN_EXCHANGE_GRANT]})

        class JWKS(web.RequestHandler):
            def get(self):
                jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(idp.key.public_key()))
                self.write({"keys": [{**jwk, "kid": "k1", "use": "sig"}]})

        class Token(web.RequestHandler):
            async def post(self):
                expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
                if self.request.headers.get("Authorization") != f"Basic {expected}":
                    raise web.HTTPError(401)
                form = {k: v[0] for k, v in parse_qs(self.request.body.decode()).items()}
                grant = form["grant_type"]
                idp.calls[grant] = idp.calls.get(grant, 0) + 1
                if grant == "refresh_token":
                    await asyncio.sleep(idp.refresh_delay)
                    if idp.refresh_mode == "500":
                        raise web.HTTPError(502)
                    if idp.refresh_mode == "invalid_grant" or form["refresh_token"] not in idp.live_refresh_tokens:
                        self.set_status(400)
                        return self.write({"error": "invalid_grant"})
                    idp.live_refresh_tokens.discard(form["refresh_token"])  # rotation
                    return self.write(idp.token_set())
                if grant == TOKEN_EXCHANGE_GRANT:
                    if form["audience"] in idp.refused_audiences:
                        self.set_status(400)
                        return self.write({"error": "invalid_target"})
                    jwt.decode(form["subject_token"], idp.key.public_key(), algorithms=["RS256"], audience=CLIENT_ID)
                    return self.write({"access_token": idp.jwt(aud=form["audience"], scope=form["scope"]),
                                       "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                                       "token_type": "Bearer", "expires_in": idp.lifetime, "scope": form["scope"]})
                self.set_status(400)
                self.write({"error": "unsupported_grant_type"})

        app = web.Application([(r"/\.well-known/openid-configuration", Discovery), (r"/jwk", JWKS), (r"/token", Token)])
        sock = socket.socket()
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.server = httpserver.HTTPServer(app)
        self.server.add_sockets([sock])

    async def stop(self) -> None:
        if self.server:
            self.server.stop()
            await self.server.close_all_connections()
            self.server = None


@dataclass
class HubUser:
    """What refresh_user reads from the hub's User: its name and (decrypted) auth_state."""

    name: str
    auth_state: dict | None = field(repr=False)

    async def get_auth_state(self):
        return json.loads(json.dumps(self.auth_state)) if self.auth_state is not None else None


@pytest.fixture
async def idp():
    server = MiniIdP()
    await server.start()
    yield server
    await server.stop()


def authenticator(idp: MiniIdP, **config) -> IAMAuthenticator:
    settings = dict(issuer=idp.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, token_exchanges=EXCHANGES,
                    allowed_groups={"/cms"}, admin_groups={"cms/admins"}, retry_backoff=0.01)
    settings.update(config)
    return IAMAuthenticator(**settings)


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


async def test_fresh_tokens_need_no_idp_call(idp):
    auth = authenticator(idp)
    assert await auth.refresh_user(HubUser("alice", idp.auth_state_for_login())) is True
    assert idp.calls == {}


async def test_due_refresh_rotates_reexchanges_and_mirrors_groups(idp):
    auth = authenticator(idp)
    idp.lifetime = 40  # margin: max(60, 4) capped at half the lifetime = 20 s
    state = idp.auth_state_for_login(access_token_expires_at=time.time() + 15)
    idp.lifetime, idp.groups = 600, ["/cms", "cms/admins"]
    model = await auth.refresh_user(HubUser("alice", state))
    new = model["auth_state"]
    assert model["name"] == "alice" and model["admin"] is True and model["groups"] == ["/cms", "/cms/admins"]
    assert new["refresh_token"] != state["refresh_token"] and new["refresh_token"] in idp.live_refresh_tokens
    assert new["access_token_expires_at"] == claims(new["access_token"])["exp"] > time.time() + 500
    assert set(new["exchanged_tokens"]) == {"condor", "xrootd"}
    condor = new["exchanged_tokens"]["condor"]
    assert claims(condor["access_token"])["aud"] == EXCHANGES["condor"]["audience"]
    assert condor["scope"] == EXCHANGES["condor"]["scope"] and condor["expires_at"] == claims(condor["access_token"])["exp"]
    assert idp.calls == {"refresh_token": 1, TOKEN_EXCHANGE_GRANT: 2}


async def test_fifty_concurrent_refreshes_make_one_idp_call(idp):
    auth = authenticator(idp)
    idp.refresh_delay = 0.2  # all 50 requests arrive while the refresh is in flight
    state = idp.auth_state_for_login(access_token_expires_at=time.time() + 5)
    users = [HubUser("alice", state) for _ in range(50)]
    results = await asyncio.gather(*(auth.refresh_user(u) for u in users))
    assert idp.calls["refresh_token"] == 1
    assert len({r["auth_state"]["refresh_token"] for r in results}) == 1
    # a request that read auth_state before the hub stored the rotated token reuses the result
    late = await auth.refresh_user(HubUser("alice", state))
    assert late["auth_state"]["refresh_token"] == results[0]["auth_state"]["refresh_token"]
    assert idp.calls["refresh_token"] == 1


async def test_rejected_refresh_token_forces_new_login(idp):
    auth = authenticator(idp)
    idp.refresh_mode = "invalid_grant"
    state = idp.auth_state_for_login(access_token_expires_at=time.time() + 5)
    assert await auth.refresh_user(HubUser("alice", state)) is False


async def test_expired_refresh_token_forces_new_login_without_idp_call(idp):
    auth = authenticator(idp)
    state = idp.auth_state_for_login(access_token_expires_at=time.time() + 5, refresh_token_expires_at=time.time() - 1)
    assert await auth.refresh_user(HubUser("alice", state)) is False
    assert idp.calls == {}


async def test_idp_5xx_keeps_current_tokens_until_expiry(idp):
    auth = authenticator(idp, retry_attempts=3)
    idp.refresh_mode = "500"
    valid = idp.auth_state_for_login(access_token_expires_at=time.time() + 5)
    assert await auth.refresh_user(HubUser("alice", valid)) is True
    assert idp.calls["refresh_token"] == 3  # retried with backoff
    expired = idp.auth_state_for_login(access_token_expires_at=time.time() - 1)
    assert await auth.refresh_user(HubUser("alice", expired)) is False


async def test_idp_down_keeps_current_tokens_until_expiry(idp):
    auth = authenticator(idp, retry_attempts=2)
    await auth.ensure_discovered()
    state = idp.auth_state_for_login(access_token_expires_at=time.time() + 5)
    await idp.stop()
    assert await auth.refresh_user(HubUser("alice", state)) is True
    state["access_token_expires_at"] = time.time() - 1
    assert await auth.refresh_user(HubUser("alice", state)) is False


async def test_one_failing_exchange_keeps_last_good_token_and_others_fresh(idp):
    auth = authenticator(idp)
    first = await auth.refresh_user(HubUser("alice", idp.auth_state_for_login(access_token_expires_at=time.time() + 5)))
    old = first["auth_state"]["exchanged_tokens"]
    idp.refused_audiences = {EXCHANGES["xrootd"]["audience"]}
    before = REGISTRY.get_sample_value("cmsaf_iam_failures_total", {"operation": "exchange", "reason": "invalid_target"}) or 0
    state = dict(first["auth_state"], access_token_expires_at=time.time() + 5)
    second = (await auth.refresh_user(HubUser("alice", state)))["auth_state"]["exchanged_tokens"]
    assert second["xrootd"] == old["xrootd"]  # last good kept, with its real expiry
    assert second["condor"]["access_token"] != old["condor"]["access_token"]
    after = REGISTRY.get_sample_value("cmsaf_iam_failures_total", {"operation": "exchange", "reason": "invalid_target"})
    assert after == before + 1


async def test_user_removed_from_allowed_group_must_log_in_again(idp):
    auth = authenticator(idp)
    idp.groups = ["/atlas"]
    state = idp.auth_state_for_login(access_token_expires_at=time.time() + 5)
    assert await auth.refresh_user(HubUser("alice", state)) is False
    assert TOKEN_EXCHANGE_GRANT not in idp.calls  # no tokens exchanged for a refused user


async def test_refreshed_tokens_of_another_user_are_refused(idp):
    auth = authenticator(idp)
    state = idp.auth_state_for_login(access_token_expires_at=time.time() + 5)
    assert await auth.refresh_user(HubUser("mallory", state)) is False


async def test_refreshed_tokens_of_another_iam_account_are_refused(idp):
    """The hub user is bound to the sub of its first login; a refresh may not swap the account."""
    auth = authenticator(idp)
    bound_elsewhere = idp.auth_state_for_login(access_token_expires_at=time.time() + 5,
                                               identity={"iss": idp.issuer, "sub": "sub-of-the-first-login"})
    assert await auth.refresh_user(HubUser("alice", bound_elsewhere)) is False
    bound_here = idp.auth_state_for_login(access_token_expires_at=time.time() + 5,
                                          identity={"iss": idp.issuer, "sub": "sub-alice"})
    refreshed = await auth.refresh_user(HubUser("alice", bound_here))
    assert refreshed["auth_state"]["identity"] == {"iss": idp.issuer, "sub": "sub-alice"}


async def test_unreachable_issuer_gives_clear_discovery_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    auth = IAMAuthenticator(issuer=f"http://127.0.0.1:{port}/", client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                            retry_backoff=0.01)
    with pytest.raises(DiscoveryFailed, match=r"IAM at http://127\.0\.0\.1:\d+/ is unreachable"):
        await auth.ensure_discovered(attempts=3)


async def test_discovery_rejects_wrong_issuer(idp):
    idp.announced_issuer = "https://evil.example/"
    with pytest.raises(DiscoveryFailed, match="announces issuer 'https://evil.example/'"):
        await authenticator(idp).ensure_discovered()
    missing = authenticator(idp, issuer=idp.issuer + "other/")
    with pytest.raises(DiscoveryFailed, match=r"has no discovery document \(http 404\)"):
        await missing.ensure_discovered()


async def test_tokens_too_short_for_auth_refresh_age_are_warned_about_once(idp, caplog):
    """30 s tokens get a 15 s margin (half the lifetime): the default 30 s check interval can miss it."""
    idp.lifetime = 30
    auth = authenticator(idp, auth_refresh_age=30)
    assert auth.refresh_margin > auth.auth_refresh_age  # the startup check passes
    for _ in range(3):
        assert await auth.refresh_user(HubUser("alice", idp.auth_state_for_login())) is True
    warnings = [r.getMessage() for r in caplog.records if "IAM issues 30 s access tokens" in r.getMessage()]
    assert warnings == ["IAM issues 30 s access tokens: their refresh margin is 15 s, not above auth_refresh_age "
                        "(30 s), so active users may be checked too late to refresh before expiry; set "
                        "c.IAMAuthenticator.auth_refresh_age to at most 7"]
    caplog.clear()
    quick = authenticator(idp, auth_refresh_age=7)
    assert await quick.refresh_user(HubUser("alice", idp.auth_state_for_login())) is True
    assert "access tokens: their refresh margin" not in caplog.text


async def test_no_token_in_logs_repr_or_errors_across_refresh_cycles(idp, caplog):
    caplog.set_level(logging.DEBUG)
    auth = authenticator(idp)
    state = idp.auth_state_for_login(access_token_expires_at=time.time() + 5)
    model = await auth.refresh_user(HubUser("alice", state))
    idp.refused_audiences = {EXCHANGES["xrootd"]["audience"]}
    idp.refresh_mode = "invalid_grant"
    await auth.refresh_user(HubUser("alice", dict(model["auth_state"], access_token_expires_at=time.time() + 5)))
    text = caplog.text + repr(auth) + repr(HubUser("alice", model["auth_state"]))
    assert "Refreshed IAM tokens of alice" in caplog.text and "invalid_grant" in caplog.text
    secrets_seen = [t for t in idp.issued + [CLIENT_SECRET] if t in text]
    assert secrets_seen == []


def test_exchange_config_is_validated_as_data():
    with pytest.raises(Exception, match="'audience' must be a non-empty string"):
        IAMAuthenticator(token_exchanges={"condor": {"scope": "compute.read"}})
    with pytest.raises(Exception, match="unknown keys"):
        IAMAuthenticator(token_exchanges={"condor": {"audience": "a", "scopes": "x"}})
