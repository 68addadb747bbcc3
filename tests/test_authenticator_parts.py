"""The authenticator's pure parts: names and groups, the refresh decision, exchange merging, retries,
single flight and discovery parsing."""

from __future__ import annotations

import asyncio

import pytest

from authenticators.discovery import DiscoveryFailed, parse_discovery
from authenticators.logout import end_session_url, login_url_beside, refusal_html
from authenticators.exchange import (
    ExchangeFailed,
    ExchangeSpec,
    build_exchange_params,
    exchange_all,
    merge_exchanged,
    parse_exchange_specs,
)
from authenticators.identity import (
    Identity,
    IdentityConflict,
    UsernameRefused,
    bound_identity,
    check_binding,
    claim_groups,
    hub_username,
    normalize_group,
    safe_username,
)
from authenticators.refresh import (
    ConsumedRefreshTokens,
    RetryableError,
    SingleFlight,
    refresh_due,
    refresh_margin,
    with_backoff,
)


@pytest.mark.parametrize(
    "raw, name",
    [("alice", "alice"), ("Alice.Smith", "alice.smith"), ("bob@cern.ch", "bob-cern.ch"), (" -x y- ", "x-y"),
     ("../etc", "etc")],
)
def test_safe_username(raw, name):
    assert safe_username(raw) == name


def test_safe_username_refuses_empty():
    with pytest.raises(ValueError, match="no usable characters"):
        safe_username("///")


#: IAM usernames that safe_username would all turn into "alice" (issue 17).
LOOK_ALIKES = ["Alice", "ALICE", "alice.", "-alice", "alice!", "alice ", "alice\u00a0", "\u0430lice", "alice@"]


@pytest.mark.parametrize("raw", LOOK_ALIKES + ["///", ""])
def test_hub_username_refuses_what_normalization_would_change(raw):
    with pytest.raises(UsernameRefused) as refused:
        hub_username(raw)
    assert str(refused.value) == (
        f"The IAM username {raw!r} cannot be used in this hub: hub usernames are IAM usernames that are "
        "already lower case, made only of a-z, 0-9, '.', '_' and '-', and neither begin nor end with '.' or '-'."
    )


@pytest.mark.parametrize("name", ["alice", "a", "alice.smith", "bob_2", "x-y", "_svc", "0day"])
def test_hub_username_is_the_identity_on_hub_usernames(name):
    assert hub_username(name) == name == safe_username(name)


ISS = "https://iam.test/"


def test_binding_first_login_binds_same_account_passes_other_account_refused_unless_rebound():
    alice = Identity(ISS, "sub-alice")
    assert check_binding("alice", None, alice, None) is False  # first login: binds
    assert check_binding("alice", alice, alice, None) is False  # the bound account: passes
    for other in (Identity(ISS, "sub-mallory"), Identity("https://other-iam.test/", "sub-alice")):
        with pytest.raises(IdentityConflict) as conflict:
            check_binding("alice", alice, other, None)
        assert str(conflict.value) == (f"hub user alice is bound to sub-alice at {ISS}, "
                                       f"the login presented {other.subject} at {other.issuer}")
        # an admin's rebind names exactly one subject: another one is still refused
        with pytest.raises(IdentityConflict):
            check_binding("alice", alice, other, "sub-someone-else")
    assert check_binding("alice", alice, Identity(ISS, "sub-mallory"), "sub-mallory") is True


def test_bound_identity_from_auth_state_or_older_auth_state_claims():
    assert bound_identity(None, "oauth_user") is None
    assert bound_identity({"access_token": "x"}, "oauth_user") is None
    assert bound_identity({"identity": {"iss": ISS, "sub": "s1"}}, "oauth_user") == Identity(ISS, "s1")
    # auth_state written before bindings existed: the verified claims it kept
    assert bound_identity({"oauth_user": {"iss": ISS, "sub": "s2", "preferred_username": "a"}},
                          "oauth_user") == Identity(ISS, "s2")


def test_groups_from_wlcg_groups_then_groups_with_leading_slash_normalized():
    assert normalize_group("cms/admins") == normalize_group("/cms/admins/") == "/cms/admins"
    keys = ["wlcg.groups", "groups"]
    assert claim_groups({"wlcg.groups": ["/cms", "cms/admins"], "groups": ["x"]}, keys) == {"/cms", "/cms/admins"}
    assert claim_groups({"groups": "cms cms/admins"}, keys) == {"/cms", "/cms/admins"}
    assert claim_groups({"wlcg.groups": []}, keys) == set()  # present but empty: no fallback
    assert claim_groups({"sub": "x"}, keys) == set()


@pytest.mark.parametrize(
    "lifetime, minimum, fraction, margin",
    [(3600, 60, 0.1, 360), (600, 60, 0.1, 60), (600, 300, 0.1, 300), (60, 60, 0.1, 30), (0, 60, 0.1, 0)],
)
def test_refresh_margin_is_larger_of_fixed_and_fraction_capped_at_half(lifetime, minimum, fraction, margin):
    assert refresh_margin(lifetime, minimum, fraction) == margin


def test_refresh_due_only_inside_the_margin():
    assert not refresh_due(1000.0, 600, now=939.0, minimum=60, fraction=0.1)
    assert refresh_due(1000.0, 600, now=940.0, minimum=60, fraction=0.1)
    assert refresh_due(None, 600, now=0.0, minimum=60, fraction=0.1)


def test_exchange_specs_validated_as_data():
    specs = parse_exchange_specs({"condor": {"audience": "https://wlcg.cern.ch/jwt/v1/any", "scope": " compute.read  compute.create "}})
    assert specs["condor"] == ExchangeSpec("condor", "https://wlcg.cern.ch/jwt/v1/any", "compute.read compute.create")
    for bad, message in [({"a b": {"audience": "x"}}, "alphanumeric"), ({"x": "aud"}, "must be a dict"),
                         ({"x": {"audience": ""}}, "non-empty"), ({"x": {"audience": "a", "scope": ["s"]}}, "space-separated")]:
        with pytest.raises(ValueError, match=message):
            parse_exchange_specs(bad)


def test_exchange_params_follow_rfc8693():
    spec = ExchangeSpec("xrootd", "https://xrd.example:1094", "storage.read:/")
    params = build_exchange_params("SUBJECT", spec, {})
    assert params == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": "SUBJECT",
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "audience": "https://xrd.example:1094",
        "scope": "storage.read:/",
    }
    assert build_exchange_params("S", spec, {"client_id": "c", "client_secret": "s"})["client_id"] == "c"


def test_merge_keeps_last_good_until_it_really_expires():
    previous = {"condor": {"access_token": "old-c", "expires_at": 2000.0}, "xrootd": {"access_token": "old-x", "expires_at": 1500.0},
                "removed": {"access_token": "r", "expires_at": 9999.0}}
    fresh = {"condor": {"access_token": "new-c", "expires_at": 2600.0}}
    merged = merge_exchanged(previous, fresh, {"xrootd": "invalid_target"}, now=1000.0)
    assert merged == {"condor": {"access_token": "new-c", "expires_at": 2600.0},
                      "xrootd": {"access_token": "old-x", "expires_at": 1500.0}}
    assert "xrootd" not in merge_exchanged(previous, fresh, {"xrootd": "down"}, now=1500.0)
    assert merge_exchanged(None, {}, {"condor": "down"}, now=0) == {}


async def test_exchange_all_runs_concurrently_and_isolates_failures():
    specs = parse_exchange_specs({n: {"audience": n} for n in ("a", "b", "c")})
    running = 0
    peak = 0

    async def one(spec):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        if spec.name == "b":
            raise ExchangeFailed("b", "invalid_target")
        if spec.name == "c":
            raise KeyError("boom")
        return {"access_token": spec.name}

    outcome = await exchange_all(specs, one)
    assert peak == 3
    assert outcome.fresh == {"a": {"access_token": "a"}}
    assert outcome.failed == {"b": "invalid_target", "c": "KeyError"}
    assert "access_token" not in repr(outcome)


async def test_with_backoff_retries_only_retryable_errors():
    delays: list[float] = []

    async def sleep(d):
        delays.append(d)

    attempts = 0

    async def flaky():
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RetryableError("http 502")
        return "ok"

    assert await with_backoff(flaky, attempts=5, base_delay=1.0, sleep=sleep) == "ok"
    assert len(delays) == 2 and 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0

    async def down():
        raise RetryableError("ConnectionRefusedError")

    with pytest.raises(RetryableError):
        await with_backoff(down, attempts=3, base_delay=1.0, sleep=sleep)
    assert len(delays) == 4

    async def refused():
        raise ValueError("invalid_grant")

    with pytest.raises(ValueError):
        await with_backoff(refused, attempts=3, base_delay=1.0, sleep=sleep)
    assert len(delays) == 4


async def test_single_flight_shares_one_call_and_survives_a_cancelled_caller():
    flight = SingleFlight()
    calls = 0
    gate = asyncio.Event()

    async def work():
        nonlocal calls
        calls += 1
        await gate.wait()
        return calls

    waiters = [asyncio.ensure_future(flight.run("alice", work)) for _ in range(10)]
    other = asyncio.ensure_future(flight.run("bob", work))
    await asyncio.sleep(0)
    waiters[0].cancel()
    gate.set()
    results = await asyncio.gather(*waiters[1:], other)
    assert calls == 2 and set(results[:-1]) == {results[0]}
    assert not flight.in_flight("alice")
    assert await flight.run("alice", work) == 3  # a later call is a new flight


def test_consumed_refresh_tokens_recognise_only_the_spent_token():
    consumed = ConsumedRefreshTokens()
    consumed.remember("alice", "rt-1", {"name": "alice"})
    assert consumed.result_for("alice", "rt-1") == {"name": "alice"}
    assert consumed.result_for("alice", "rt-2") is None
    assert consumed.result_for("bob", "rt-1") is None
    assert "rt-1" not in repr(consumed)


def test_discovery_document_parsing():
    doc = {"issuer": "https://iam.example/", "authorization_endpoint": "https://iam.example/authorize",
           "token_endpoint": "https://iam.example/token", "jwks_uri": "https://iam.example/jwk",
           "grant_types_supported": ["urn:ietf:params:oauth:grant-type:token-exchange"]}
    endpoints = parse_discovery(doc, "https://iam.example")
    assert endpoints.token_endpoint == "https://iam.example/token" and endpoints.supports_token_exchange
    assert endpoints.end_session_endpoint == ""  # not announced: the refusal page says how instead
    assert parse_discovery({**doc, "end_session_endpoint": "https://iam.example/logout"},
                           "https://iam.example/").end_session_endpoint == "https://iam.example/logout"
    with pytest.raises(DiscoveryFailed, match="lacks jwks_uri"):
        parse_discovery({**doc, "jwks_uri": ""}, "https://iam.example/")
    with pytest.raises(DiscoveryFailed, match="not a JSON object"):
        parse_discovery(["x"], "https://iam.example/")


def test_sign_out_url_and_the_refusal_text():
    assert login_url_beside("https://hub.example/hub/oauth_callback") == "https://hub.example/hub/login"
    assert end_session_url("https://iam.example/logout", "hub", "https://hub.example/hub/login") == (
        "https://iam.example/logout?client_id=hub&post_logout_redirect_uri=https%3A%2F%2Fhub.example%2Fhub%2Flogin")
    text = refusal_html("<b>not</b> a member", "https://iam.example/logout?a=1&b=2", "https://iam.example/")
    assert text.startswith("&lt;b&gt;not&lt;/b&gt; a member</p><p>")  # the message is text, never markup
    assert '<a href="https://iam.example/logout?a=1&amp;b=2">Sign out of IAM' in text
    # an IAM without end_session_endpoint: say where to sign out instead of linking
    assert refusal_html("refused", None, "https://iam.example/").endswith(
        "To use another account, sign out at https://iam.example/ first, then log in again.")
