"""What IAMAuthenticator costs: hub API throughput and IdP calls per user-hour, against stock
GenericOAuthenticator measured in the same run.

1. Throughput: two real hubs (the repository's config, each with its own dev IAM), one with
   ``IAMAuthenticator`` and one with stock ``GenericOAuthenticator``. Users log in through the IdP's
   form; then concurrent ``GET /hub/api/user`` requests with their hub tokens, with
   ``auth_refresh_age = 1`` on both so ``refresh_user`` runs in the request path. Rounds alternate
   between the two hubs; the median round counts. Target: IAM >= 0.9x stock.
2. IdP calls per user-hour: 200 active users, 10-minute tokens, one virtual hour (each user requests
   every 1-60 s). The hub's ``auth_refresh_age`` gate is applied as JupyterHub does; each check asks
   the real ``IAMAuthenticator.refresh_is_due`` and counts a refresh grant when it says so. Stock
   oauthenticator's ``refresh_user`` policy (read from oauth2.py) is modelled on the same arrivals: one
   userinfo call per check, plus refresh grant + userinfo once the token has expired. Target:
   refresh grants <= ceil(3600 / lifetime) + 1.

    .venv/bin/python benchmarks/auth_overhead.py [--users 4] [--concurrency 8] [--seconds 5] [--rounds 3] [--quick]

``--quick`` (what CI runs): 2 users, one 1-second round; it checks the script, not the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import jwt  # noqa: E402

from authenticators.iam import IAMAuthenticator  # noqa: E402
from devstack.hub import HubProcess, IAMClientSettings  # noqa: E402
from devstack.iam import HUB_GRANT_TYPES, DevIAM  # noqa: E402
from devstack.pki import ensure_dev_pki  # noqa: E402
from devstack.hubs import RunningHub, admin_service_config, new_admin_token  # noqa: E402
from devstack.login import login_via_iam  # noqa: E402

DEMO_USERS = ["alice", "bob"]
COMMON = "c.Authenticator.auth_refresh_age = 1\nc.GenericOAuthenticator.basic_auth = True\n"
IAM_CONFIG = """
import os
c.JupyterHub.authenticator_class = "authenticators.IAMAuthenticator"
c.IAMAuthenticator.issuer = os.environ["CMSAF_IAM_ISSUER"]
c.IAMAuthenticator.token_exchanges = {
    "condor": {"audience": "https://wlcg.cern.ch/jwt/v1/any", "scope": "compute.read compute.create"},
    "xrootd": {"audience": "https://xrootd.cmsaf.test:1094", "scope": "storage.read:/"},
}
"""


async def start_hub(state: Path, name: str, extra: str) -> RunningHub:
    secret = secrets.token_urlsafe(24)
    admin_token = new_admin_token()
    process = HubProcess(state_dir=state / f"hub-{name}", crypt_key=secrets.token_hex(32),
                         iam=IAMClientSettings(issuer="", client_id="cmsaf-hub", client_secret=secret),
                         extra_config=admin_service_config(admin_token) + COMMON + extra)
    iam = DevIAM(state / f"iam-{name}", clients=[{
        "client_id": "cmsaf-hub", "client_secret": secret, "grant_types": HUB_GRANT_TYPES,
        "redirect_uris": [f"{process.url}hub/oauth_callback"]}])
    await iam.start()
    process.iam.issuer, process.iam.ca_cert = iam.issuer, iam.ca_cert
    hub = RunningHub(process=process, admin_token=admin_token, iam=iam)
    await hub.start()
    return hub


async def user_tokens(hub: RunningHub, users: int) -> list[str]:
    tokens = []
    for i in range(users):
        name = DEMO_USERS[i % len(DEMO_USERS)]
        session = await login_via_iam(hub, name, f"{name}-password")
        r = session.login_response
        assert r.status_code == 200, f"{name} could not log in: {r.status_code} at {r.url}: {r.text[:300]}"
        await session.aclose()
        tokens.append(await hub.user_token(name, note=f"bench-{i}"))
    return tokens


async def throughput(hub: RunningHub, tokens: list[str], concurrency: int, seconds: float) -> float:
    """Completed ``GET /hub/api/user`` per second (all must be 200)."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(i: int, http: httpx.AsyncClient):
        nonlocal done
        headers = {"Authorization": f"token {tokens[i % len(tokens)]}"}
        while time.perf_counter() < deadline:
            r = await http.get(f"{hub.api_url}/user", headers=headers)
            if r.status_code != 200:
                raise RuntimeError(f"GET /hub/api/user answered {r.status_code}")
            done += 1

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as http:
        began = time.perf_counter()
        await asyncio.gather(*(worker(i, http) for i in range(concurrency)))
        return done / (time.perf_counter() - began)


def simulate_idp_calls(users: int, lifetime: int, hours: float, seed: int = 4) -> dict[str, float]:
    """IdP calls per user-hour: IAMAuthenticator's decision vs stock oauthenticator's policy."""
    auth = IAMAuthenticator()
    refresh_age = auth.auth_refresh_age
    stock_refresh_age = 300  # JupyterHub's default auth_refresh_age, what stock deployments run
    rng = random.Random(seed)
    key = secrets.token_bytes(32)
    counts = {"iam_refresh": 0, "stock_calls": 0, "stock_refresh": 0}
    horizon = hours * 3600

    def issue(now: float) -> dict:
        token = jwt.encode({"iat": int(now), "exp": int(now) + lifetime}, key, algorithm="HS256")
        return {"access_token": token, "access_token_expires_at": float(int(now) + lifetime)}

    for _ in range(users):
        now = rng.uniform(0, 60)
        iam_state, iam_checked = issue(now), now
        stock_expiry, stock_checked = now + lifetime, now
        while now < horizon:
            if now - iam_checked >= refresh_age:
                iam_checked = now
                if auth.refresh_is_due(iam_state, now):
                    counts["iam_refresh"] += 1
                    iam_state = issue(now)
            if now - stock_checked >= stock_refresh_age:
                stock_checked = now
                counts["stock_calls"] += 1  # userinfo with the current access token
                if now >= stock_expiry:  # 401 -> refresh grant -> userinfo again
                    counts["stock_calls"] += 2
                    counts["stock_refresh"] += 1
                    stock_expiry = now + lifetime
            now += rng.uniform(1, 60)
    exchanges = 2
    per_user_hour = users * hours
    return {
        "iam_refresh": counts["iam_refresh"] / per_user_hour,
        "iam_total": counts["iam_refresh"] * (1 + exchanges) / per_user_hour,
        "stock_refresh": counts["stock_refresh"] / per_user_hour,
        "stock_total": counts["stock_calls"] / per_user_hour,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=4, help="logged-in users sending requests")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one measured round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 users, one 1-second round: checks the script")
    args = parser.parse_args()
    if args.quick:
        args.users, args.seconds, args.rounds = 2, 1.0, 1

    sim = simulate_idp_calls(users=200, lifetime=600, hours=1.0)
    target = math.ceil(3600 / 600) + 1
    print("IdP calls per user-hour, 200 active users, 10-minute tokens (virtual hour):")
    print(f"  IAMAuthenticator: {sim['iam_refresh']:.2f} refresh grants (target <= {target}), "
          f"{sim['iam_total']:.2f} token-endpoint calls incl. 2 exchanges each")
    print(f"  stock GenericOAuthenticator: {sim['stock_refresh']:.2f} refresh grants, "
          f"{sim['stock_total']:.2f} IdP calls incl. userinfo")
    print(f"  ratio refresh grants IAM/target = {sim['iam_refresh'] / target:.2f}; "
          f"IdP calls IAM/stock = {sim['iam_total'] / sim['stock_total']:.2f}")

    with tempfile.TemporaryDirectory(prefix="auth-bench-") as tmp:
        state = Path(tmp)
        ensure_dev_pki(state)
        hubs = {"iam": await start_hub(state, "iam", IAM_CONFIG), "stock": await start_hub(state, "stock", "")}
        try:
            tokens = {name: await user_tokens(hub, args.users) for name, hub in hubs.items()}
            for name, hub in hubs.items():  # warm up
                await throughput(hub, tokens[name], args.concurrency, 1.0)
            rates: dict[str, list[float]] = {"iam": [], "stock": []}
            for _ in range(args.rounds):
                for name, hub in hubs.items():
                    rates[name].append(await throughput(hub, tokens[name], args.concurrency, args.seconds))
        finally:
            for hub in hubs.values():
                await hub.stop()
                await hub.iam.stop()
    iam_rate, stock_rate = statistics.median(rates["iam"]), statistics.median(rates["stock"])
    print(f"Authenticated GET /hub/api/user, {args.users} users, concurrency {args.concurrency}, "
          f"auth_refresh_age=1 on both, median of {args.rounds} x {args.seconds:.0f} s:")
    print(f"  IAMAuthenticator: {iam_rate:.0f} req/s   stock GenericOAuthenticator: {stock_rate:.0f} req/s")
    print(f"  ratio IAM/stock = {iam_rate / stock_rate:.2f} (target >= 0.90)")


if __name__ == "__main__":
    asyncio.run(main())
