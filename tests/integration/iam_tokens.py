"""Exchanged ``condor`` tokens for dev IAM users, obtained the way the hub obtains them.

A confidential client logs the user in through the dev IAM's real login form (authorization code
with PKCE), then exchanges the access token (RFC 8693) for a token with the WLCG audience and the
compute scopes HTCondor's SciTokens mapping expects.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import ssl
from urllib.parse import parse_qs, urljoin, urlparse

import httpx

from authenticators.exchange import build_exchange_params, parse_exchange_specs
from devstack.login import FormParser

CLIENT_ID = "htcondor-it"
REDIRECT_URI = "http://127.0.0.1:9/callback"  # never contacted: the code is read from the redirect
CONDOR_EXCHANGE = {"condor": {"audience": "https://wlcg.cern.ch/jwt/v1/any",
                              "scope": "compute.read compute.create compute.modify compute.cancel"}}


def client_registration() -> dict:
    """What to pass to ``DevIAM(clients=[...])``."""
    return {
        "client_id": CLIENT_ID,
        "client_secret": secrets.token_urlsafe(24),
        "redirect_uris": [REDIRECT_URI],
        "grant_types": ["authorization_code", "urn:ietf:params:oauth:grant-type:token-exchange"],
    }


async def condor_token(iam, username: str) -> str:
    """A fresh exchanged condor token for ``username`` (password ``<name>-password``)."""
    client = next(c for c in iam.clients if c["client_id"] == CLIENT_ID)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    tls = ssl.create_default_context(cafile=str(iam.ca_cert))
    async with httpx.AsyncClient(verify=tls, timeout=30) as http:
        response = await http.get(urljoin(iam.issuer, "authorize"), params={
            "client_id": CLIENT_ID, "response_type": "code", "scope": "openid", "redirect_uri": REDIRECT_URI,
            "state": secrets.token_urlsafe(8), "code_challenge": challenge, "code_challenge_method": "S256"})
        for _ in range(10):
            if response.is_redirect:
                location = urljoin(str(response.url), response.headers["location"])
                if location.startswith(REDIRECT_URI):
                    code = parse_qs(urlparse(location).query)["code"][0]
                    break
                response = await http.get(location)
                continue
            form = FormParser()
            form.feed(response.text)
            if form.action is None:
                raise AssertionError(f"dev IAM login for {username} stopped at {response.url}: {response.status_code}")
            form.fields.update(login=username, password=iam.user(username)["password"])
            response = await http.post(urljoin(str(response.url), form.action), data=form.fields)
        else:
            raise AssertionError(f"dev IAM login for {username} did not finish")
        auth = (CLIENT_ID, client["client_secret"])
        tokens = await http.post(urljoin(iam.issuer, "token"), auth=auth, data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier})
        tokens.raise_for_status()
        spec = parse_exchange_specs(CONDOR_EXCHANGE)["condor"]
        exchanged = await http.post(urljoin(iam.issuer, "token"), auth=auth,
                                    data=build_exchange_params(tokens.json()["access_token"], spec, {}))
        exchanged.raise_for_status()
        return exchanged.json()["access_token"]
