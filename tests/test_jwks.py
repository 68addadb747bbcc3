"""JWT verification against a JWKS: real keys, real signatures, and a forged-token suite."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from authenticators.jwks import JWKSCache, TokenRejected, TokenVerifier, parse_jwks

ISSUER = "https://iam.test.example/"
AUD = "cmsaf-hub"


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(private_key, kid: str) -> dict:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(private_key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    jwk = json.loads(algorithm.to_jwk(private_key.public_key()))
    jwk.update(kid=kid, use="sig")
    return jwk


def sign(private_key, kid: str | None, alg: str = "RS256", **overrides) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUD, "sub": "u-1", "iat": now, "exp": now + 600, **overrides}
    claims = {k: v for k, v in claims.items() if v is not None}
    headers = {"kid": kid} if kid else {}
    return jwt.encode(claims, private_key, algorithm=alg, headers=headers)


def b64(data: dict | bytes) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Issuer:
    """Holds the signing keys an issuer publishes; counts JWKS fetches."""

    def __init__(self, *keys):
        self.published = {kid: key for kid, key in keys}
        self.fetches = 0

    async def fetch(self) -> dict:
        self.fetches += 1
        return {"keys": [public_jwk(k, kid) for kid, k in self.published.items()]}


@pytest.fixture(scope="module")
def keys():
    return {"k1": rsa_key(), "k2": rsa_key(), "attacker": rsa_key(), "ec": ec.generate_private_key(ec.SECP256R1())}


def make_verifier(issuer: Issuer, refetch_interval: float = 0.0) -> TokenVerifier:
    return TokenVerifier(issuer=ISSUER, jwks=JWKSCache(issuer.fetch, min_refetch_interval=refetch_interval), leeway=5)


async def test_valid_rsa_and_ec_tokens_verify(keys):
    issuer = Issuer(("k1", keys["k1"]), ("ec1", keys["ec"]))
    verifier = make_verifier(issuer)
    assert (await verifier.verify(sign(keys["k1"], "k1"), [AUD]))["sub"] == "u-1"
    assert (await verifier.verify(sign(keys["ec"], "ec1", alg="ES256"), [AUD, "other"]))["aud"] == AUD
    assert issuer.fetches == 1  # cached after the first fetch


def forged_tokens(keys) -> dict[str, tuple[str, str]]:
    """Each forged token with the reason it must be rejected for."""
    k1 = keys["k1"]
    now = int(time.time())
    public_pem = k1.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header_claims = b64({"iss": ISSUER, "aud": AUD, "sub": "u-1", "iat": now, "exp": now + 600})
    hs256_input = f"{b64({'alg': 'HS256', 'kid': 'k1', 'typ': 'JWT'})}.{header_claims}".encode()
    hs256 = hs256_input.decode() + "." + b64(hmac.new(public_pem, hs256_input, hashlib.sha256).digest())
    return {
        "alg none": (f"{b64({'alg': 'none', 'kid': 'k1'})}.{header_claims}.", "alg none"),
        "HS256 with public key": (hs256, "algorithm not allowed"),
        "wrong key": (sign(keys["attacker"], "k1"), "bad signature"),
        "unknown kid": (sign(keys["attacker"], "attacker-kid"), "unknown kid"),
        "wrong iss": (sign(k1, "k1", iss="https://evil.example/"), "wrong issuer"),
        "wrong aud": (sign(k1, "k1", aud="someone-else"), "wrong audience"),
        "expired": (sign(k1, "k1", iat=now - 1200, exp=now - 600), "expired"),
        "not yet valid": (sign(k1, "k1", nbf=now + 600), "not yet valid"),
        "EC alg on RSA key": (sign(keys["ec"], "k1", alg="ES256"), "algorithm does not match key"),
        "missing exp": (sign(k1, "k1", exp=None), "missing claim"),
        "garbage": ("not.a.jwt", "malformed"),
    }


@pytest.mark.parametrize(
    "case",
    ["alg none", "HS256 with public key", "wrong key", "unknown kid", "wrong iss", "wrong aud", "expired",
     "not yet valid", "EC alg on RSA key", "missing exp", "garbage"],
)
async def test_forged_token_rejected_with_reason_not_token(keys, case):
    token, reason = forged_tokens(keys)[case]
    verifier = make_verifier(Issuer(("k1", keys["k1"])))
    with pytest.raises(TokenRejected) as info:
        await verifier.verify(token, [AUD])
    assert info.value.reason == reason
    message = f"{info.value} {info.value!r}"
    assert all(part not in message for part in token.split(".") if len(part) > 8)


async def test_pyjwt_accepts_hs256_public_key_forgery_only_when_allowed(keys):
    """Guard for the forged-token suite: the HS256 forgery is a real one (valid HMAC over the PEM)."""
    token, _ = forged_tokens(keys)["HS256 with public key"]
    pem = keys["k1"].public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header, payload, signature = token.split(".")
    expected = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256).sign(f"{header}.{payload}".encode(), pem)
    assert b64(expected) == signature


async def test_key_rotation_refetches_once_on_unknown_kid(keys):
    issuer = Issuer(("k1", keys["k1"]))
    verifier = make_verifier(issuer)
    await verifier.verify(sign(keys["k1"], "k1"), [AUD])
    issuer.published = {"k2": keys["k2"]}  # IAM rotates its key
    assert (await verifier.verify(sign(keys["k2"], "k2"), [AUD]))["sub"] == "u-1"
    assert issuer.fetches == 2
    assert verifier.jwks.kids == ["k2"]


async def test_unknown_kid_refetch_is_rate_limited(keys):
    issuer = Issuer(("k1", keys["k1"]))
    verifier = make_verifier(issuer, refetch_interval=3600)
    await verifier.verify(sign(keys["k1"], "k1"), [AUD])
    for _ in range(5):
        with pytest.raises(TokenRejected, match="unknown kid"):
            await verifier.verify(sign(keys["attacker"], f"forged-{_}"), [AUD])
    assert issuer.fetches == 1


async def test_concurrent_unknown_kid_lookups_share_one_refetch(keys):
    issuer = Issuer(("k1", keys["k1"]))
    verifier = make_verifier(issuer, refetch_interval=0)
    await verifier.verify(sign(keys["k1"], "k1"), [AUD])
    issuer.published["k2"] = keys["k2"]
    token = sign(keys["k2"], "k2")
    results = await asyncio.gather(*(verifier.verify(token, [AUD]) for _ in range(20)))
    assert all(r["sub"] == "u-1" for r in results)
    assert issuer.fetches == 2


async def test_kidless_token_needs_a_single_published_key(keys):
    one = make_verifier(Issuer(("k1", keys["k1"])))
    assert (await one.verify(sign(keys["k1"], None), [AUD]))["sub"] == "u-1"
    two = make_verifier(Issuer(("k1", keys["k1"]), ("k2", keys["k2"])))
    with pytest.raises(TokenRejected, match="no kid"):
        await two.verify(sign(keys["k1"], None), [AUD])


async def test_leeway_tolerates_small_clock_skew(keys):
    now = int(time.time())
    verifier = make_verifier(Issuer(("k1", keys["k1"])))  # leeway 5 s
    assert await verifier.verify(sign(keys["k1"], "k1", iat=now - 60, exp=now - 2), [AUD])
    with pytest.raises(TokenRejected, match="expired"):
        await verifier.verify(sign(keys["k1"], "k1", iat=now - 60, exp=now - 30), [AUD])


def test_parse_jwks_skips_symmetric_encryption_and_broken_keys(keys):
    document = {
        "keys": [
            public_jwk(keys["k1"], "good"),
            {**public_jwk(keys["k2"], "enc"), "use": "enc"},
            {"kty": "oct", "kid": "hmac", "k": b64(b"secret")},
            {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        ]
    }
    assert sorted(parse_jwks(document)) == ["good"]


def test_repr_holds_no_key_material(keys):
    issuer = Issuer(("k1", keys["k1"]))
    verifier = make_verifier(issuer)
    text = repr(verifier)
    assert ISSUER in text and "fetch" not in text and "_keys" not in text
