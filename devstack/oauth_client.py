"""Get real tokens from the dev IAM the way a client does: login form + code, client credentials, RFC 8693."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

from devstack.iam import DevIAM
from devstack.login import FormParser, trusting

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
WLCG_AUDIENCE = "https://wlcg.cern.ch/jwt/v1/any"


@dataclass
class HarnessClient:
    """An OAuth client registered in a dev IAM for tests (never contacted at its redirect URI)."""

    client_id: str = "harness-client"
    client_secret: str = field(default="harness-client-secret", repr=False)
    redirect_uri: str = "http://127.0.0.1:9/callback"

    def registration(self) -> dict:
        """What to pass to ``DevIAM(clients=[...])``."""
        return {"client_id": self.client_id, "client_secret": self.client_secret,
                "redirect_uris": [self.redirect_uri],
                "grant_types": ["authorization_code", "refresh_token", "client_credentials", TOKEN_EXCHANGE_GRANT]}


def _http(iam: DevIAM) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=trusting(iam.ca_cert), timeout=30)


async def _token(iam: DevIAM, client: HarnessClient, data: dict) -> dict:
    async with _http(iam) as http:
        r = await http.post(f"{iam.issuer}token", data=data, auth=(client.client_id, client.client_secret))
    if r.status_code != 200:
        raise AssertionError(f"token request ({data['grant_type']}) refused: {r.status_code} {r.text[:300]}")
    return r.json()


async def login_tokens(iam: DevIAM, client: HarnessClient, username: str,
                       scope: str = "openid profile offline_access wlcg wlcg.groups") -> dict:
    """The token response of an authorization-code login of ``username`` through the IdP's form."""
    async with _http(iam) as http:
        page = await http.get(f"{iam.issuer}authorize", follow_redirects=True, params={
            "response_type": "code", "client_id": client.client_id, "redirect_uri": client.redirect_uri,
            "scope": scope, "state": "harness"})
        page.raise_for_status()
        form = FormParser()
        form.feed(page.text)
        form.fields.update(login=username, password=iam.user(username)["password"])
        r = await http.post(urljoin(str(page.url), form.action), data=form.fields)
        while r.is_redirect:
            location = urljoin(str(r.url), r.headers["location"])
            if location.startswith(client.redirect_uri):
                code = parse_qs(urlsplit(location).query)["code"][0]
                break
            r = await http.get(location)
        else:
            raise AssertionError(f"{username}'s login did not come back to the client: {r.status_code}")
    return await _token(iam, client, {"grant_type": "authorization_code", "code": code,
                                      "redirect_uri": client.redirect_uri})


async def exchange(iam: DevIAM, client: HarnessClient, subject_token: str, *, scope: str,
                   audience: str = WLCG_AUDIENCE) -> dict:
    """RFC 8693: an audience-scoped token for the subject of ``subject_token``."""
    return await _token(iam, client, {"grant_type": TOKEN_EXCHANGE_GRANT, "subject_token": subject_token,
                                      "subject_token_type": ACCESS_TOKEN_TYPE, "audience": audience,
                                      "scope": scope})


async def user_token(iam: DevIAM, client: HarnessClient, username: str, *, scope: str,
                     audience: str = WLCG_AUDIENCE) -> str:
    """An exchanged access token of ``username`` with ``scope`` for ``audience``."""
    login = await login_tokens(iam, client, username)
    return (await exchange(iam, client, login["access_token"], scope=scope, audience=audience))["access_token"]


def issuer_signed(iam: DevIAM, claims: dict) -> str:
    """A JWT signed with the dev IAM's own current key, for tokens it will not issue on request
    (e.g. one that has already expired). Read from the IdP's state directory, as only a test may."""
    import json

    import jwt

    private_jwk = json.loads((iam.state_dir / "provider" / "signing-keys.json").read_text())["keys"][0]
    key = jwt.PyJWK.from_dict(private_jwk, algorithm="RS256")
    return jwt.encode(claims, key.key, algorithm="RS256", headers={"kid": private_jwk["kid"], "typ": "at+jwt"})
