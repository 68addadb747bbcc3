"""The token endpoint and browser OAuth to the service, with a real IAM login through the hub."""

import pytest

from devstack.login import login_via_iam
from tests.service_helpers import service_hub_factory  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


async def test_browser_oauth_and_token_endpoint(service_hub_factory, tmp_path):
    sh = await service_hub_factory()
    session = await login_via_iam(sh.hub, "alice", "alice-password")
    async with session:
        # a browser logs in to the service through the hub's OAuth (the service's pages start it)...
        r = await session.get(f"{sh.hub.url}services/cmsaf/")
        assert r.status_code == 200 and str(r.url) == f"{sh.hub.url}services/cmsaf/"
        # ...after which its cookie identifies it to the API
        r = await session.get(f"{sh.api}clusters")
        assert r.status_code == 200 and r.json() == []

        # a cookie alone may read, never change (no cross-site request forgery)
        r = await session.post(f"{sh.api}clusters", json={"options": {}})
        assert r.status_code == 403 and "Authorization: token" in r.json()["error"]

        via_cookie = await session.get(f"{sh.api}tokens")
        assert via_cookie.status_code == 200, via_cookie.text

    state = (await sh.hub.get_user("alice"))["auth_state"]
    token = await sh.hub.user_token("alice")
    async with sh.client(token) as alice:
        r = await alice.get("tokens")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["issuer"] == sh.hub.iam.issuer
    expected = {
        name: {k: entry[k] for k in ("access_token", "expires_at", "audience", "scope")}
        for name, entry in (state.get("exchanged_tokens") or {}).items()
    }
    assert body["tokens"] == expected
    assert body["tokens"], "the hub's authenticator configured no exchanged tokens"
    # only exchanged tokens leave the hub: never the IAM access, refresh or id tokens
    for secret in (state["access_token"], state.get("refresh_token"), state.get("id_token")):
        if secret:
            assert secret not in r.text and secret not in via_cookie.text
    assert state["refresh_token"] not in sh.hub.log_text()
