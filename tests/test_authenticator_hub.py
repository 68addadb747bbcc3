"""IAMAuthenticator end to end: a real JupyterHub (with configurable-http-proxy) and the dev IAM."""

from __future__ import annotations

import asyncio
import html
import re
import socket
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from devstack.hub import HubError
from devstack.login import FormParser, confirm_iam_sign_out, login_via_iam, trusting

EXCHANGES = {
    "condor": {"audience": "https://wlcg.cern.ch/jwt/v1/any",
               "scope": "compute.read compute.create compute.modify compute.cancel"},
    "xrootd": {"audience": "https://xrootd.cmsaf.test:1094", "scope": "storage.read:/"},
}
# the dev IAM knows no such scope: this exchange fails at every login and refresh
BROKEN = {"broken": {"audience": "https://nowhere.test", "scope": "compute.admin"}}


def iam_config(exchanges: dict, **traits) -> str:
    """Config text switching the repository's hub to IAMAuthenticator."""
    lines = [
        "import os",
        'c.JupyterHub.authenticator_class = "authenticators.IAMAuthenticator"',
        'c.IAMAuthenticator.issuer = os.environ["CMSAF_IAM_ISSUER"]',
        f"c.IAMAuthenticator.token_exchanges = {exchanges!r}",
        "c.JupyterHub.authenticate_prometheus = False",
    ]
    lines += [f"c.IAMAuthenticator.{name} = {value!r}" for name, value in traits.items()]
    return "\n".join(lines) + "\n"


async def iam_jwks(iam) -> dict:
    async with httpx.AsyncClient(verify=trusting(iam.ca_cert)) as http:
        return (await http.get(f"{iam.issuer}jwk")).json()


def verify_independently(token: str, jwks: dict, audience: str, issuer: str) -> dict:
    """PyJWT alone (not the code under test) checks the exchanged token."""
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(jwt.PyJWK(k) for k in jwks["keys"] if k["kid"] == kid)
    return jwt.decode(token, key.key, algorithms=["RS256"], audience=audience, issuer=issuer)


def secrets_in(auth_state: dict) -> list[str]:
    found = [auth_state[k] for k in ("access_token", "refresh_token", "id_token") if auth_state.get(k)]
    found += [e["access_token"] for e in auth_state.get("exchanged_tokens", {}).values()]
    return found


async def idp_token_posts(iam) -> int:
    return len(re.findall(r"POST /token 200", iam.log_path.read_text(errors="replace")))


def assert_refreshed_before_expiry(states: list[dict]) -> None:
    """Each access token (and each exchanged token) in ``states`` was issued, by IAM's own ``iat``,
    before the one it replaced expired (``exp``): the hub never let them lapse."""
    def stamps(token: str) -> tuple[int, int]:
        claims = jwt.decode(token, options={"verify_signature": False})
        return claims["iat"], claims["exp"]

    tokens = [[s["access_token"], *(e["access_token"] for e in s["exchanged_tokens"].values())] for s in states]
    for older, newer in zip(tokens, tokens[1:]):
        for old, new in zip(older, newer):
            if old != new:
                assert stamps(new)[0] <= stamps(old)[1], "a token was replaced only after it expired"


async def metric(hub, name: str, labels: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{hub.url}hub/metrics")).text
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def error_block(page: httpx.Response) -> str:
    """The text of JupyterHub's error box on ``page`` (tags removed, entities decoded)."""
    box = re.search(r'<div class="error">(.*?)</div>', page.text, re.S)
    assert box, page.text[:500]
    return html.unescape(re.sub(r"<[^>]+>", " ", box.group(1)))


async def test_a_refused_account_can_switch_and_hub_logout_ends_the_iam_session(hub_factory):
    hub = await hub_factory(extra_config=iam_config(EXCHANGES))
    iam = hub.iam
    browser = await login_via_iam(hub, "eve", "eve-password", next_url="/hub/home")
    try:
        # the refusal: its reason once (not as the heading too), and a way out of eve's IAM session
        refused = browser.login_response
        assert refused.status_code == 403
        text = error_block(refused)
        assert "403 : Forbidden" in text and text.count("not a member of /cms") == 1, text
        [switch] = re.findall(r'<a href="([^"]+)">Sign out of IAM and sign in with another account</a>', refused.text)
        switch = html.unescape(switch)
        assert switch.startswith(f"{iam.issuer}logout?")
        assert parse_qs(urlsplit(switch).query) == {
            "client_id": [hub.process.iam.client_id], "post_logout_redirect_uri": [f"{hub.url}hub/login"]}
        # IAM asks to confirm, signs eve out and sends the browser back to the hub's login page
        confirm = await browser.get(switch)
        assert confirm.status_code == 200 and str(confirm.url).startswith(iam.issuer)
        back = await confirm_iam_sign_out(browser, confirm)
        assert back.status_code == 200 and str(back.url) == f"{hub.url}hub/login"
        # the same browser now signs in as alice: IAM shows its form again (login_via_iam checks)
        switched = await login_via_iam(hub, "alice", "alice-password", next_url="/hub/home", session=browser)
        assert switched.login_response.status_code == 200 and str(switched.login_response.url) == f"{hub.url}hub/home"

        # hub logout ends alice's IAM session too: the next login asks for credentials again
        out = await browser.get(f"{hub.url}hub/logout")
        assert str(out.url).startswith(f"{iam.issuer}logout")
        back = await confirm_iam_sign_out(browser, out)
        assert str(back.url) == f"{hub.url}hub/login"
        again = await browser.get(f"{hub.url}hub/oauth_login")
        form = FormParser()
        form.feed(again.text)
        assert str(again.url).startswith(iam.issuer) and "password" in form.fields, again.text[:300]
    finally:
        await browser.aclose()


async def test_without_iam_sign_out_hub_logout_keeps_the_iam_session(hub_factory):
    """The control: with ``end_iam_session_on_logout = False`` the next login is silently the same account."""
    hub = await hub_factory(extra_config=iam_config(EXCHANGES, end_iam_session_on_logout=False))
    browser = await login_via_iam(hub, "alice", "alice-password", next_url="/hub/home")
    try:
        out = await browser.get(f"{hub.url}hub/logout")
        assert str(out.url).startswith(hub.url), out.url
        again = await browser.get(f"{hub.url}hub/oauth_login", params={"next": "/hub/home"})
        assert again.status_code == 200 and str(again.url) == f"{hub.url}hub/home"
    finally:
        await browser.aclose()


@pytest.mark.slow
async def test_login_groups_admins_refusal_exchanges_and_no_leaks(hub_factory):
    hub = await hub_factory(extra_config=iam_config({**EXCHANGES, **BROKEN}))
    sessions = []
    try:
        for name in ("alice", "bob", "eve"):
            sessions.append(await login_via_iam(hub, name, f"{name}-password", next_url="/hub/home"))
        alice_page, bob_page, eve_page = (s.login_response for s in sessions)
        assert alice_page.status_code == 200 and bob_page.status_code == 200
        assert eve_page.status_code == 403 and "not a member of /cms" in eve_page.text
        assert "Traceback" not in eve_page.text
    finally:
        for s in sessions:
            await s.aclose()

    alice, bob = await hub.get_user("alice"), await hub.get_user("bob")
    async with hub.admin_client() as api:
        eve_status = (await api.get("/users/eve")).status_code
        groups = {g["name"]: sorted(g["users"]) for g in (await api.get("/groups")).json()}
    assert eve_status == 404  # refused at login: never became a hub user
    assert (alice["admin"], sorted(alice["groups"])) == (False, ["/cms"])
    assert (bob["admin"], sorted(bob["groups"])) == (True, ["/cms", "/cms/admins"])
    assert groups["/cms"] == ["alice", "bob"] and groups["/cms/admins"] == ["bob"]

    state = alice["auth_state"]
    jwks = await iam_jwks(hub.iam)
    assert state["access_token_expires_at"] == verify_independently(
        state["access_token"], jwks, "cmsaf-hub", hub.iam.issuer)["exp"]
    assert set(state["exchanged_tokens"]) == {"condor", "xrootd"}  # "broken" failed, the others did not
    for name, spec in EXCHANGES.items():
        entry = state["exchanged_tokens"][name]
        claims = verify_independently(entry["access_token"], jwks, spec["audience"], hub.iam.issuer)
        assert claims["scope"].split() == spec["scope"].split() == entry["scope"].split()
        assert entry["expires_at"] == claims["exp"] and entry["audience"] == spec["audience"]
        assert claims["sub"] == verify_independently(state["access_token"], jwks, "cmsaf-hub", hub.iam.issuer)["sub"]

    log = hub.log_text()
    assert "Token exchange 'broken' for alice failed (invalid_scope)" in log
    leaked = [s for s in secrets_in(state) + secrets_in(bob["auth_state"]) + [hub.process.iam.client_secret] if s in log]
    assert leaked == []
    assert await metric(hub, "cmsaf_iam_failures_total", 'operation="exchange",reason="invalid_scope"') >= 2
    assert await metric(hub, "cmsaf_iam_idp_calls_total", 'grant="authorization_code"') == 3
    assert await metric(hub, "cmsaf_iam_exchange_duration_seconds_count", 'exchange="condor"') == 2  # alice, bob


@pytest.mark.slow
async def test_hub_refuses_to_start_without_crypt_key(hub_factory):
    with pytest.raises(HubError, match="JUPYTERHUB_CRYPT_KEY"):
        await hub_factory(extra_config=iam_config(EXCHANGES), env={"JUPYTERHUB_CRYPT_KEY": ""})


@pytest.mark.slow
async def test_unreachable_iam_gives_clear_login_page_and_hub_keeps_running(hub_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"https://127.0.0.1:{s.getsockname()[1]}/"
    config = iam_config(EXCHANGES, discovery_attempts=1) + f"c.IAMAuthenticator.issuer = {dead!r}\n"
    hub = await hub_factory(extra_config=config)
    async with httpx.AsyncClient(follow_redirects=False) as http:
        page = await http.get(f"{hub.url}hub/oauth_login")
        assert page.status_code == 503
        assert f"IAM at {dead} is unreachable" in page.text and "Traceback" not in page.text
        assert (await http.get(f"{hub.api_url}/")).status_code == 200


@pytest.mark.slow
async def test_short_tokens_refreshed_ahead_single_flight_and_idp_outage(hub_factory):
    """30 s tokens: active for over two lifetimes without a new login; a burst of 50 requests makes
    one refresh; with IAM stopped the session works until the token really expires, then re-login."""
    lifetime, margin, refresh_age = 30, 10, 3
    hub = await hub_factory(
        extra_config=iam_config(EXCHANGES, refresh_margin=float(margin), retry_backoff=0.2)
        + f"c.IAMAuthenticator.auth_refresh_age = {refresh_age}\n",
        iam_options={"access_token_lifetime": lifetime},
    )
    session = await login_via_iam(hub, "alice", "alice-password", next_url="/hub/home")
    seen_states = []

    async def state() -> dict:
        auth_state = (await hub.get_user("alice"))["auth_state"]
        seen_states.append(auth_state)
        return auth_state

    try:
        first = await state()
        # quiet until the token is inside the margin (2 s into it), then 50 requests at once
        await asyncio.sleep(max(0.0, first["access_token_expires_at"] - (margin - 2) - time.time()))
        refreshes_before = await metric(hub, "cmsaf_iam_idp_calls_total", 'grant="refresh_token"')
        posts_before = await idp_token_posts(hub.iam)
        burst = await asyncio.gather(*(session.get(f"{hub.url}hub/home") for _ in range(50)))
        assert [r.status_code for r in burst] == [200] * 50
        assert all("/hub/login" not in str(r.url) for r in burst)
        assert await metric(hub, "cmsaf_iam_idp_calls_total", 'grant="refresh_token"') == refreshes_before + 1
        assert await idp_token_posts(hub.iam) == posts_before + 1 + len(EXCHANGES)
        second = await state()
        assert second["refresh_token"] != first["refresh_token"]  # rotated and stored

        # stay active until IAM has issued two more token sets: every request served, and (by IAM's own
        # stamps) each new token was issued before the one it replaced expired
        deadline = asyncio.get_running_loop().time() + 3 * lifetime
        while len({s["refresh_token"] for s in seen_states}) < 4:
            assert asyncio.get_running_loop().time() < deadline, "the hub stopped refreshing"
            r = await session.get(f"{hub.url}hub/home")
            assert r.status_code == 200 and "/hub/login" not in str(r.url)
            await state()
            await asyncio.sleep(2)
        assert_refreshed_before_expiry(seen_states)

        # the spent refresh token really is dead at IAM: the hub must have used the rotated one
        async with httpx.AsyncClient(verify=trusting(hub.iam.ca_cert)) as http:
            old = await http.post(f"{hub.iam.issuer}token", data={"grant_type": "refresh_token",
                                  "refresh_token": first["refresh_token"]},
                                  auth=("cmsaf-hub", hub.process.iam.client_secret))
        assert old.status_code == 400 and old.json()["error"] == "invalid_grant"

        # IAM goes away: requests keep working until the access token expires, then a new login
        await hub.iam.stop()
        served = 0
        deadline = asyncio.get_running_loop().time() + 2 * lifetime
        while (r := await session.get(f"{hub.url}hub/home", follow_redirects=False)).status_code == 200:
            served += 1
            assert asyncio.get_running_loop().time() < deadline, "the session outlived its token"
            await asyncio.sleep(1)
        assert served > 0  # the session kept working on its current tokens with IAM gone
        assert r.status_code == 302 and "/hub/login" in r.headers["location"]
        # ...and the hub sent it to the login because the tokens had expired, not for another reason
        assert "IAM unreachable refreshing alice (" in hub.log_text() and "and tokens expired" in hub.log_text()
    finally:
        await session.aclose()

    log = hub.log_text()
    assert "current tokens stay in use until they expire" in log
    leaked = [s for st in seen_states for s in secrets_in(st) if s in log]
    assert leaked == []


@pytest.mark.slow
async def test_login_never_redirects_off_the_hub(hub_factory):
    """A ``next`` naming another site (absolute, scheme-relative, backslash tricks) ends on the hub;
    a ``next`` on the hub is followed (the positive control)."""
    hub = await hub_factory(extra_config=iam_config(EXCHANGES) + 'c.JupyterHub.default_url = "/hub/home"\n')
    hub_host = httpx.URL(hub.url).netloc
    for target in ("https://evil.example/x", "//evil.example/x", "/\\evil.example/x", "https:evil.example"):
        async with await login_via_iam(hub, "alice", "alice-password", next_url=target) as session:
            page = session.login_response
            assert page.url.netloc == hub_host and "evil.example" not in page.url.host, (target, page.url)
            assert all(r.url.netloc != b"evil.example" for r in page.history), target
    async with await login_via_iam(hub, "alice", "alice-password", next_url="/hub/token") as session:
        page = session.login_response
        assert page.status_code == 200 and page.url.path == "/hub/token", page.url
