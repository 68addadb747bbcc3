"""The dev IAM against its real running server: discovery, login form, JWTs, refresh rotation, token
exchange rules, device flow, client credentials, lifetimes and key rotation.

One server for the module (short 60 s lifetimes); tests that restart a server start their own.
Every HTTPS call trusts the dev CA explicitly.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.iam import ALL_SCOPES, DEVICE_CODE_GRANT, TOKEN_EXCHANGE_GRANT, DevIAM, DevIAMError

LIFETIME = 60
REDIRECT_URI = "http://127.0.0.1:9/hub/oauth_callback"
PEER_ID, PEER_SECRET = "peer-service", "peer-service-secret"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
HUB_SCOPE = "openid profile email offline_access wlcg wlcg.groups"


@pytest.fixture(scope="module")
def iam(tmp_path_factory):
    server = DevIAM(
        tmp_path_factory.mktemp("dev-iam"),
        access_token_lifetime=LIFETIME, id_token_lifetime=LIFETIME,
        refresh_token_lifetime=10 * LIFETIME, device_code_lifetime=LIFETIME,
        clients=[
            {"client_id": "cmsaf-hub", "client_secret": "hub-client-secret-value",
             "redirect_uris": [REDIRECT_URI],
             "grant_types": ["authorization_code", "refresh_token", TOKEN_EXCHANGE_GRANT,
                             DEVICE_CODE_GRANT, "client_credentials"]},
            {"client_id": PEER_ID, "client_secret": PEER_SECRET,
             "grant_types": [TOKEN_EXCHANGE_GRANT, "client_credentials", "refresh_token"],
             "scope": "openid offline_access wlcg.groups compute.read compute.create storage.read:/store/user"},
        ],
    )
    with server:
        yield server


def client(iam: DevIAM, **kwargs) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(iam.ca_cert)), timeout=20, **kwargs)


class FormParser(HTMLParser):
    """Every form on a page with its inputs, plus the page title and labels."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []
        self.labels: list[str] = []
        self.title = ""
        self._in_title = False
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"method": a.get("method", ""), "action": a.get("action", ""), "inputs": {}})
        elif tag == "input" and a.get("name"):
            target = self.forms[-1] if self.forms and not a.get("form") else None
            for form in self.forms:
                if a.get("form") and form.get("id") == a["form"]:
                    target = form
            if target is not None:
                target["inputs"][a["name"]] = a.get("value", "")
        elif tag == "label":
            self.labels.append(a.get("for", ""))
        elif tag == "title":
            self._in_title = True
        if tag == "form" and a.get("id"):
            self.forms[-1]["id"] = a["id"]

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        self._text.append(data)

    @property
    def text(self) -> str:
        return " ".join(self._text)


def parse(html: str) -> FormParser:
    parser = FormParser()
    parser.feed(html)
    return parser


async def jwks(iam: DevIAM) -> dict:
    async with client(iam) as http:
        response = await http.get(f"{iam.issuer}jwk")
    response.raise_for_status()
    return response.json()


async def verify(iam: DevIAM, token: str, audience: str | list[str]) -> dict:
    """Verify an RS256 JWT against the issuer's published keys, like a resource server would."""
    key_set = jwt.PyJWKSet.from_dict(await jwks(iam))
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in key_set.keys if k.key_id == kid)
    return jwt.decode(token, key.key, algorithms=["RS256"], audience=audience, issuer=iam.issuer)


async def authorize(http: httpx.AsyncClient, iam: DevIAM, username: str, password: str, *,
                    scope: str = HUB_SCOPE, **extra: str) -> httpx.Response:
    """Start an authorization request and submit the login form; returns the response to the post."""
    params = {"response_type": "code", "client_id": iam.hub_client_id, "redirect_uri": REDIRECT_URI,
              "scope": scope, "state": "s-123", **extra}
    page = await http.get(f"{iam.issuer}authorize", params=params, follow_redirects=True)
    assert page.status_code == 200, page.text
    form = parse(page.text).forms[0]
    return await http.post(urljoin(str(page.url), form["action"]),
                           data={**form["inputs"], "login": username, "password": password})


async def login_code(http: httpx.AsyncClient, iam: DevIAM, username: str, **extra: str) -> str:
    """Log in through the form and follow the IdP's redirects up to the client's redirect URI."""
    response = await authorize(http, iam, username, f"{username}-password", **extra)
    while response.is_redirect:
        location = urljoin(str(response.url), response.headers["location"])
        if location.startswith(REDIRECT_URI):
            query = parse_qs(urlsplit(location).query)
            assert "code" in query, query
            assert query["state"] == ["s-123"]
            return query["code"][0]
        response = await http.get(location)
    raise AssertionError(f"login did not come back to the client: {response.status_code} {response.text[:300]}")


async def token_request(http: httpx.AsyncClient, iam: DevIAM, data: dict, *,
                        auth: tuple[str, str] | None = None) -> httpx.Response:
    auth = auth or (iam.hub_client_id, iam.hub_client_secret)
    return await http.post(f"{iam.issuer}token", data=data, auth=auth)


async def login_tokens(iam: DevIAM, username: str = "alice", **extra: str) -> dict:
    async with client(iam) as http:
        code = await login_code(http, iam, username, **extra)
        response = await token_request(http, iam, {"grant_type": "authorization_code", "code": code,
                                                   "redirect_uri": REDIRECT_URI})
    assert response.status_code == 200, response.text
    return response.json()


# -- discovery and login -------------------------------------------------------------------------


async def test_discovery_document_has_iam_paths_and_grants(iam):
    async with client(iam) as http:
        response = await http.get(f"{iam.issuer}.well-known/openid-configuration")
    assert response.status_code == 200
    doc = response.json()
    base = iam.issuer
    assert base.endswith("/") and doc["issuer"] == base
    assert doc["authorization_endpoint"] == f"{base}authorize"
    assert doc["token_endpoint"] == f"{base}token"
    assert doc["userinfo_endpoint"] == f"{base}userinfo"
    assert doc["jwks_uri"] == f"{base}jwk"
    assert doc["device_authorization_endpoint"] == f"{base}devicecode"
    assert doc["introspection_endpoint"] == f"{base}introspect"
    assert doc["revocation_endpoint"] == f"{base}revoke"
    assert {"authorization_code", "refresh_token", "client_credentials", DEVICE_CODE_GRANT,
            TOKEN_EXCHANGE_GRANT} <= set(doc["grant_types_supported"])
    assert set(ALL_SCOPES.split()) <= set(doc["scopes_supported"])
    assert set(doc["token_endpoint_auth_methods_supported"]) >= {"client_secret_basic", "client_secret_post"}


async def test_login_page_is_one_plain_labelled_form(iam):
    async with client(iam) as http:
        page = await http.get(f"{iam.issuer}authorize", follow_redirects=True, params={
            "response_type": "code", "client_id": iam.hub_client_id, "redirect_uri": REDIRECT_URI,
            "scope": "openid"})
    parsed = parse(page.text)
    assert page.status_code == 200
    assert "CMS IAM development login" in parsed.title
    assert len(parsed.forms) == 1
    form = parsed.forms[0]
    assert form["method"] == "post" and form["action"]
    assert {"login", "password"} <= set(form["inputs"])
    assert {"login", "password"} <= set(parsed.labels)
    assert "<script" not in page.text and "http://" not in page.text.replace(REDIRECT_URI, "")


async def test_wrong_password_shows_the_form_again_with_an_error(iam):
    async with client(iam) as http:
        response = await authorize(http, iam, "alice", "not-alice-password")
    parsed = parse(response.text)
    assert response.status_code == 200
    assert len(parsed.forms) == 1 and "password" in parsed.forms[0]["inputs"]
    assert "Wrong username or password" in parsed.text
    assert parsed.forms[0]["inputs"]["login"] == "alice"


async def test_code_flow_issues_iam_like_jwts(iam):
    tokens = await login_tokens(iam, "bob")
    assert tokens["token_type"] == "Bearer" and tokens["refresh_token"]
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header["typ"] == "at+jwt" and header["alg"] == "RS256"
    assert header["kid"] in {k["kid"] for k in (await jwks(iam))["keys"]}
    claims = await verify(iam, tokens["access_token"], audience=iam.hub_client_id)
    bob = iam.user("bob")
    assert claims["sub"] == bob["sub"] and claims["client_id"] == iam.hub_client_id
    assert claims["wlcg.ver"] == "1.0"
    assert claims["wlcg.groups"] == ["/cms", "/cms/admins"]
    assert set(claims["scope"].split()) == set(HUB_SCOPE.split())
    assert {"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope", "client_id"} <= set(claims)
    id_claims = await verify(iam, tokens["id_token"], audience=iam.hub_client_id)
    assert jwt.get_unverified_header(tokens["id_token"])["alg"] == "RS256"
    assert id_claims["sub"] == bob["sub"]


async def test_wlcg_groups_only_when_asked(iam):
    tokens = await login_tokens(iam, "alice", scope="openid profile")
    claims = await verify(iam, tokens["access_token"], audience=iam.hub_client_id)
    assert "wlcg.groups" not in claims and "refresh_token" not in tokens


async def test_userinfo_answers_per_scope(iam):
    tokens = await login_tokens(iam, "alice")
    async with client(iam) as http:
        info = await http.get(f"{iam.issuer}userinfo",
                              headers={"Authorization": f"Bearer {tokens['access_token']}"})
        anonymous = await http.get(f"{iam.issuer}userinfo")
    assert info.status_code == 200, info.text
    body = info.json()
    assert body["sub"] == iam.user("alice")["sub"]
    assert body["preferred_username"] == "alice"
    assert body["name"] and body["email"].startswith("alice@")
    assert body["wlcg.groups"] == ["/cms"] and body["groups"] == ["cms"]
    assert anonymous.status_code == 401


async def test_audience_parameter_on_authorize_and_refresh(iam):
    tokens = await login_tokens(iam, "alice", audience="https://wlcg.cern.ch/jwt/v1/any")
    claims = await verify(iam, tokens["access_token"], audience="https://wlcg.cern.ch/jwt/v1/any")
    assert claims["aud"] == "https://wlcg.cern.ch/jwt/v1/any"
    async with client(iam) as http:
        refreshed = await token_request(http, iam, {"grant_type": "refresh_token",
                                                    "refresh_token": tokens["refresh_token"],
                                                    "audience": "xrootd.example cms-condor"})
    assert refreshed.status_code == 200, refreshed.text
    claims = await verify(iam, refreshed.json()["access_token"], audience="cms-condor")
    assert claims["aud"] == ["xrootd.example", "cms-condor"]


async def test_refresh_tokens_rotate_and_old_ones_are_rejected(iam):
    tokens = await login_tokens(iam, "alice")
    async with client(iam) as http:
        first = await token_request(http, iam, {"grant_type": "refresh_token",
                                                "refresh_token": tokens["refresh_token"]})
        assert first.status_code == 200, first.text
        rotated = first.json()
        assert rotated["refresh_token"] != tokens["refresh_token"]
        claims = await verify(iam, rotated["access_token"], audience=iam.hub_client_id)
        assert claims["sub"] == iam.user("alice")["sub"]
        reused = await token_request(http, iam, {"grant_type": "refresh_token",
                                                 "refresh_token": tokens["refresh_token"]})
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"


async def test_second_authorization_in_the_same_browser_session_skips_the_form(iam):
    async with client(iam) as http:
        await login_code(http, iam, "bob")
        response = await http.get(f"{iam.issuer}authorize", params={
            "response_type": "code", "client_id": iam.hub_client_id, "redirect_uri": REDIRECT_URI,
            "scope": HUB_SCOPE, "state": "s-123"})
        while not response.headers.get("location", "").startswith(REDIRECT_URI):
            assert response.is_redirect, response.text[:300]
            response = await http.get(urljoin(str(response.url), response.headers["location"]))
        code = parse_qs(urlsplit(response.headers["location"]).query)["code"][0]
        tokens = await token_request(http, iam, {"grant_type": "authorization_code", "code": code,
                                                 "redirect_uri": REDIRECT_URI})
    assert tokens.status_code == 200 and tokens.json()["refresh_token"]
    claims = await verify(iam, tokens.json()["access_token"], audience=iam.hub_client_id)
    assert claims["sub"] == iam.user("bob")["sub"]


async def test_client_secret_post_works_too(iam):
    async with client(iam) as http:
        code = await login_code(http, iam, "alice")
        response = await http.post(f"{iam.issuer}token", data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "client_id": iam.hub_client_id, "client_secret": iam.hub_client_secret})
    assert response.status_code == 200, response.text


async def test_short_lifetimes_are_honoured(iam):
    tokens = await login_tokens(iam, "alice")
    assert tokens["expires_in"] == LIFETIME
    access = await verify(iam, tokens["access_token"], audience=iam.hub_client_id)
    ident = await verify(iam, tokens["id_token"], audience=iam.hub_client_id)
    assert access["exp"] - access["iat"] == LIFETIME
    assert ident["exp"] - ident["iat"] == LIFETIME


# -- token exchange ------------------------------------------------------------------------------


async def exchange(iam: DevIAM, subject_token: str, *, auth=(PEER_ID, PEER_SECRET), **params) -> httpx.Response:
    data = {"grant_type": TOKEN_EXCHANGE_GRANT, "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE, **params}
    async with client(iam) as http:
        return await token_request(http, iam, data, auth=auth)


async def test_token_exchange_issues_scoped_audience_token(iam):
    subject = (await login_tokens(iam, "alice"))["access_token"]
    response = await exchange(iam, subject, audience="https://wlcg.cern.ch/jwt/v1/any",
                              scope="compute.read compute.create storage.read:/store/user/alice")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE and body["token_type"] == "Bearer"
    assert body["expires_in"] == LIFETIME and "refresh_token" not in body
    assert body["scope"] == "compute.read compute.create storage.read:/store/user/alice"
    claims = await verify(iam, body["access_token"], audience="https://wlcg.cern.ch/jwt/v1/any")
    assert claims["sub"] == iam.user("alice")["sub"]
    assert claims["act"] == {"sub": PEER_ID} and claims["client_id"] == PEER_ID
    assert claims["scope"] == body["scope"] and claims["wlcg.ver"] == "1.0"
    assert jwt.get_unverified_header(body["access_token"])["typ"] == "at+jwt"


async def test_token_exchange_by_the_hub_for_several_audiences(iam):
    subject = (await login_tokens(iam, "bob"))["access_token"]
    response = await exchange(iam, subject, auth=(iam.hub_client_id, iam.hub_client_secret),
                              audience="cms-condor xrootd.example", scope="compute.read wlcg.groups")
    assert response.status_code == 200, response.text
    claims = await verify(iam, response.json()["access_token"], audience="cms-condor")
    assert claims["aud"] == ["cms-condor", "xrootd.example"]
    assert claims["wlcg.groups"] == ["/cms", "/cms/admins"] and claims["act"] == {"sub": iam.hub_client_id}


async def test_token_exchange_refuses_delegation(iam):
    subject = (await login_tokens(iam, "alice"))["access_token"]
    response = await exchange(iam, subject, scope="compute.read", actor_token=subject,
                              actor_token_type=ACCESS_TOKEN_TYPE)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request", "error_description": "delegation not supported"}


def forged_token(claims: dict, kid: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid, "typ": "at+jwt"})


async def test_token_exchange_refuses_forged_and_foreign_subject_tokens(iam):
    real = (await login_tokens(iam, "alice"))["access_token"]
    claims = jwt.decode(real, options={"verify_signature": False})
    kid = jwt.get_unverified_header(real)["kid"]
    forged = await exchange(iam, forged_token(claims, kid), scope="compute.read")
    foreign = await exchange(iam, forged_token({**claims, "iss": "https://other-iam.example/"}, "other"),
                             scope="compute.read")
    not_a_jwt = await exchange(iam, "opaque-token-value", scope="compute.read")
    for response in (forged, foreign, not_a_jwt):
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"
        assert response.json()["error_description"].startswith("invalid subject_token")


def signed_with_issuer_key(iam: DevIAM, claims: dict) -> str:
    """A token signed with the dev IAM's own current key (read from its state dir)."""
    keys = json.loads((iam.state_dir / "provider" / "signing-keys.json").read_text())["keys"]
    key = jwt.PyJWK(keys[0])
    return jwt.encode(claims, key.key, algorithm="RS256", headers={"kid": keys[0]["kid"], "typ": "at+jwt"})


async def test_token_exchange_refuses_expired_subject_token(iam):
    claims = jwt.decode((await login_tokens(iam, "alice"))["access_token"], options={"verify_signature": False})
    now = int(time.time())
    still_valid = await exchange(iam, signed_with_issuer_key(iam, claims), scope="compute.read")
    assert still_valid.status_code == 200, still_valid.text  # the construction itself is accepted
    expired = {**claims, "iat": now - 3600, "nbf": now - 3600, "exp": now - 60}
    response = await exchange(iam, signed_with_issuer_key(iam, expired), scope="compute.read")
    assert response.status_code == 400
    assert response.json()["error_description"] == "invalid subject_token: expired"


async def test_token_exchange_denies_offline_access_for_own_token(iam):
    subject = (await login_tokens(iam, "alice"))["access_token"]
    response = await exchange(iam, subject, auth=(iam.hub_client_id, iam.hub_client_secret),
                              scope="openid offline_access")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert "offline_access" in response.json()["error_description"]


async def test_token_exchange_offline_access_for_another_client_gives_a_refresh_token(iam):
    subject = (await login_tokens(iam, "alice"))["access_token"]
    response = await exchange(iam, subject, scope="openid offline_access compute.read", audience="peer")
    assert response.status_code == 200, response.text
    refresh_token = response.json()["refresh_token"]
    async with client(iam) as http:
        refreshed = await token_request(http, iam, {"grant_type": "refresh_token", "refresh_token": refresh_token},
                                        auth=(PEER_ID, PEER_SECRET))
    assert refreshed.status_code == 200, refreshed.text
    claims = await verify(iam, refreshed.json()["access_token"], audience="peer")
    assert claims["sub"] == iam.user("alice")["sub"] and "compute.read" in claims["scope"].split()


async def test_token_exchange_refuses_scopes_beyond_client_or_user(iam):
    alice = (await login_tokens(iam, "alice"))["access_token"]
    not_for_client = await exchange(iam, alice, scope="compute.cancel")
    outside_path = await exchange(iam, alice, scope="storage.read:/store/group")
    eve = (await login_tokens(iam, "eve"))["access_token"]
    not_for_user = await exchange(iam, eve, scope="compute.read")
    for response in (not_for_client, outside_path, not_for_user):
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_scope"


async def test_eve_gets_no_cms_capabilities_at_login(iam):
    tokens = await login_tokens(iam, "eve", scope="openid wlcg.groups compute.read storage.read:/store")
    claims = await verify(iam, tokens["access_token"], audience=iam.hub_client_id)
    assert set(claims["scope"].split()) == {"openid", "wlcg.groups"}
    assert claims["wlcg.groups"] == ["/atlas"]


# -- other grants --------------------------------------------------------------------------------


async def test_client_credentials(iam):
    async with client(iam) as http:
        response = await token_request(http, iam, {"grant_type": "client_credentials", "scope": "compute.read"},
                                       auth=(PEER_ID, PEER_SECRET))
    assert response.status_code == 200, response.text
    claims = await verify(iam, response.json()["access_token"], audience=PEER_ID)
    assert claims["sub"] == PEER_ID and claims["scope"] == "compute.read" and claims["wlcg.ver"] == "1.0"


async def test_device_code_flow(iam):
    async with client(iam) as http:
        start = await http.post(f"{iam.issuer}devicecode", data={"client_id": iam.hub_client_id,
                                                                 "scope": "openid profile wlcg.groups offline_access"},
                                auth=(iam.hub_client_id, iam.hub_client_secret))
        assert start.status_code == 200, start.text
        grant = start.json()
        assert grant["expires_in"] == LIFETIME
        assert grant["verification_uri"] == f"{iam.issuer}device"
        poll = {"grant_type": DEVICE_CODE_GRANT, "device_code": grant["device_code"]}
        pending = await token_request(http, iam, poll)
        assert pending.json()["error"] == "authorization_pending"

        # The browser opens the complete URI (a form carrying the code), confirms the code shown,
        # then logs in through the same plain login form.
        page = await http.get(grant["verification_uri_complete"])
        carry = parse(page.text).forms[0]
        assert carry["inputs"]["user_code"] == grant["user_code"]
        page = await http.post(urljoin(str(page.url), carry["action"]), data=carry["inputs"])
        assert grant["user_code"] in page.text
        confirm = next(f for f in parse(page.text).forms if f["inputs"].get("confirm") == "yes")
        page = await http.post(urljoin(str(page.url), confirm["action"]), data=confirm["inputs"],
                               follow_redirects=True)
        login = parse(page.text).forms[0]
        assert {"login", "password"} <= set(login["inputs"])
        done = await http.post(urljoin(str(page.url), login["action"]), follow_redirects=True,
                               data={**login["inputs"], "login": "bob", "password": "bob-password"})
        assert done.status_code == 200 and "Device signed in" in done.text
        tokens = await token_request(http, iam, poll)
    assert tokens.status_code == 200, tokens.text
    claims = await verify(iam, tokens.json()["access_token"], audience=iam.hub_client_id)
    assert claims["sub"] == iam.user("bob")["sub"] and claims["wlcg.groups"] == ["/cms", "/cms/admins"]
    assert tokens.json()["refresh_token"]


async def test_introspection_and_revocation(iam):
    tokens = await login_tokens(iam, "alice")
    async with client(iam) as http:
        introspected = await http.post(f"{iam.issuer}introspect", data={"token": tokens["access_token"]},
                                       auth=(PEER_ID, PEER_SECRET))
        assert introspected.json()["active"] is True
        assert introspected.json()["sub"] == iam.user("alice")["sub"]
        refresh = await http.post(f"{iam.issuer}introspect", data={"token": tokens["refresh_token"]},
                                  auth=(PEER_ID, PEER_SECRET))
        assert refresh.json()["active"] is True
        assert refresh.json()["exp"] - refresh.json()["iat"] == 10 * LIFETIME  # refresh lifetime honoured
        revoked = await http.post(f"{iam.issuer}revoke", data={"token": tokens["refresh_token"]},
                                  auth=(iam.hub_client_id, iam.hub_client_secret))
        assert revoked.status_code == 200
        after = await token_request(http, iam, {"grant_type": "refresh_token",
                                                "refresh_token": tokens["refresh_token"]})
    assert after.json()["error"] == "invalid_grant"


# -- secrets, lifecycle, rotation ----------------------------------------------------------------


async def test_no_secret_in_logs_or_repr(iam):
    tokens = await login_tokens(iam, "alice")
    async with client(iam) as http:
        await token_request(http, iam, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
        await http.get(f"{iam.issuer}userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    log = iam.log_path.read_text()
    assert "GET /userinfo 200" in log
    assert "oidc-provider WARNING" not in log  # every startup warning is handled (README.md)
    for secret in (iam.hub_client_secret, PEER_SECRET, tokens["access_token"], tokens["refresh_token"],
                   tokens["id_token"], "alice-password"):
        assert secret not in log
    assert iam.hub_client_secret not in repr(iam)


async def test_key_rotation_publishes_both_keys_and_keeps_refresh_tokens(tmp_path):
    iam = DevIAM(tmp_path, access_token_lifetime=LIFETIME,
                 clients=[{"client_id": "cmsaf-hub", "client_secret": "hub-client-secret-value",
                           "redirect_uris": [REDIRECT_URI]}])
    async with iam:
        issuer = iam.issuer
        before = await login_tokens(iam, "alice")
        old_kid = jwt.get_unverified_header(before["access_token"])["kid"]
        await iam.rotate_signing_key()
        assert iam.issuer == issuer
        kids = [k["kid"] for k in (await jwks(iam))["keys"]]
        assert len(kids) == 2 and old_kid in kids
        await verify(iam, before["access_token"], audience=iam.hub_client_id)
        async with client(iam) as http:
            refreshed = await token_request(http, iam, {"grant_type": "refresh_token",
                                                        "refresh_token": before["refresh_token"]})
        assert refreshed.status_code == 200, refreshed.text
        new_kid = jwt.get_unverified_header(refreshed.json()["access_token"])["kid"]
        assert new_kid != old_kid and new_kid in kids


async def test_port_in_use_fails_with_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        iam = DevIAM(tmp_path, port=busy.getsockname()[1])
        with pytest.raises(DevIAMError, match="already in use"):
            await iam.start()
    assert not iam.running
    await iam.stop()


async def test_bad_config_fails_with_a_clear_error(tmp_path):
    iam = DevIAM(tmp_path, clients=[{"client_id": "broken", "client_secret": "x"}])
    with pytest.raises(DevIAMError, match="exited with status 1") as failure:
        await iam.start()
    assert str(failure.value).splitlines()[-1] == (
        "dev-iam: error: clients[0] (broken): client_secret must be a string of 8+ characters")


async def test_missing_node_modules_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("devstack.iam.OIDC_PROVIDER_PACKAGE", tmp_path / "absent" / "package.json")
    with pytest.raises(DevIAMError, match=r"npm ci --prefix devstack"):
        await DevIAM(tmp_path).start()


def test_clients_cannot_change_while_running(iam):
    with pytest.raises(DevIAMError, match="before start"):
        iam.add_client(client_id="late", client_secret="late-client-secret")
