"""IAMAuthenticator's verification against the real dev IAM: its JWKS, its key rotation, forgeries."""

from __future__ import annotations

import base64
import json

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from authenticators.iam import IAMAuthenticator
from authenticators.jwks import TokenRejected
from devstack.login import trusting

CLIENT_ID, CLIENT_SECRET = "cmsaf-hub", "hub-client-secret-value"


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def client_credentials_token(iam) -> str:
    async with httpx.AsyncClient(verify=trusting(iam.ca_cert)) as http:
        r = await http.post(f"{iam.issuer}token", data={"grant_type": "client_credentials", "scope": "wlcg"},
                            auth=(CLIENT_ID, CLIENT_SECRET))
    r.raise_for_status()
    return r.json()["access_token"]


@pytest.mark.slow
async def test_dev_iam_tokens_verify_across_key_rotation_and_forgeries_fail(dev_iam_factory):
    iam = await dev_iam_factory(clients=[{
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": ["http://127.0.0.1:9/cb"],
        "grant_types": ["authorization_code", "refresh_token", "client_credentials"]}])
    auth = IAMAuthenticator(issuer=iam.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                            http_request_kwargs={"ca_certs": str(iam.ca_cert)}, jwks_refetch_interval=0)

    before = await client_credentials_token(iam)
    assert (await auth.verify_token(before, "access", [CLIENT_ID]))["iss"] == iam.issuer

    await iam.rotate_signing_key()
    after = await client_credentials_token(iam)
    assert jwt.get_unverified_header(after)["kid"] != jwt.get_unverified_header(before)["kid"]
    assert (await auth.verify_token(after, "access", [CLIENT_ID]))["iss"] == iam.issuer  # refetched JWKS
    assert await auth.verify_token(before, "access", [CLIENT_ID])  # the old key stays published

    header, payload, _ = after.split(".")
    claims = jwt.decode(after, options={"verify_signature": False})
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = jwt.get_unverified_header(after)["kid"]
    forged = {
        "wrong key": jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": kid}),
        "alg none": f"{b64({'alg': 'none', 'kid': kid})}.{payload}.",
        "unknown kid": jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": "not-iam"}),
        "tampered claims": f"{header}.{b64({**claims, 'sub': 'someone-else'})}.{after.split('.')[2]}",
    }
    for token in forged.values():
        with pytest.raises(TokenRejected):
            await auth.verify_token(token, "access", [CLIENT_ID])
    with pytest.raises(TokenRejected, match="wrong audience"):
        await auth.verify_token(after, "access", ["https://wlcg.cern.ch/jwt/v1/any"])
