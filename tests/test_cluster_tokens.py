"""When the service pushes fresh tokens into a running cluster (the push itself runs for real in
tests/test_token_push.py and tests/test_data_access.py)."""

from __future__ import annotations

import time

import jwt

from cmsaf_hub.service.cluster_tokens import ClusterTokenKeeper, earliest_expiry


def token(exp: float) -> str:
    return jwt.encode({"sub": "alice-sub", "exp": int(exp)}, "k" * 32, algorithm="HS256")


def test_earliest_expiry_reads_exp_of_every_token():
    assert earliest_expiry({"condor": token(2000), "xrootd": token(1000)}) == 1000
    assert earliest_expiry({"x": "not-a-jwt"}) is None


async def test_due_when_never_pushed_then_near_expiry_or_half_life():
    now = time.time()

    async def provider(owner):
        return {"condor": token(now + 3600)}

    keeper = ClusterTokenKeeper(tokens_provider=provider, margin=300)
    assert keeper.due("c1", now)
    keeper._held["c1"] = (now, now + 3600)
    assert not keeper.due("c1", now)
    assert not keeper.due("c1", now + 3600 - 301)
    assert keeper.due("c1", now + 3600 - 299)
    # short tokens: half their lifetime decides, not the margin
    keeper._held["c2"] = (now, now + 60)
    assert not keeper.due("c2", now + 29)
    assert keeper.due("c2", now + 31)
    keeper.forget("c1")
    assert keeper.due("c1", now + 10)


async def test_nothing_valid_to_push_is_not_pushed_and_not_retried_at_every_check():
    now = time.time()

    async def expired(owner):
        return {"condor": token(now - 10)}

    keeper = ClusterTokenKeeper(tokens_provider=expired, margin=300)
    # an unreachable scheduler address: a push attempt would raise
    assert await keeper.refresh("c1", "alice", "tls://127.0.0.1:9", security=None) is False
    assert not keeper.due("c1", now + 100)
    assert keeper.due("c1", now + 200)
