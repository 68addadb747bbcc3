"""Hub users are bound to one IAM account: a real JupyterHub and the dev IAM with look-alike accounts.

The dev IAM reads a users file written here: the demo users plus IAM accounts whose usernames the
old normalization mapped onto ``alice`` (issue 17), each with its own ``sub``. Then alice's IAM
account is "recreated" (same username, new ``sub``) by restarting the dev IAM with another file.
"""

from __future__ import annotations

import json

import pytest

from devstack.iam import DEFAULT_USERS_FILE
from devstack.login import login_via_iam
from tests.test_authenticator_hub import EXCHANGES, iam_config

pytestmark = pytest.mark.slow

LOOK_ALIKES = ["Alice", "ALICE", "alice.", "-alice", "alice!", "alice ", "alice\u00a0"]
RECREATED_SUB = "7f3e9b2a-0c4d-4e8f-9a1b-2c3d4e5f6a7b"


def write_users(path, *, alice_sub: str | None = None) -> None:
    directory = json.loads(DEFAULT_USERS_FILE.read_text())
    for user in directory["users"]:
        if user["username"] == "alice" and alice_sub:
            user["sub"] = alice_sub
    for i, name in enumerate(LOOK_ALIKES):
        directory["users"].append({"username": name, "password": f"look-alike-{i}",
                                   "sub": f"00000000-0000-4000-8000-{i:012d}", "groups": ["/cms"]})
    path.write_text(json.dumps(directory))


async def login_page(hub, username: str, password: str):
    session = await login_via_iam(hub, username, password, next_url="/hub/home")  # no session spawn
    await session.aclose()
    return session.login_response


async def test_look_alike_names_and_another_sub_are_refused_until_an_admin_rebinds(hub_factory, tmp_path):
    users = tmp_path / "users.json"
    write_users(users)
    hub = await hub_factory(extra_config=iam_config(EXCHANGES), iam_options={"users_file": users})
    alice_sub = hub.iam.user("alice")["sub"]

    # positive control: alice's first login binds the hub user alice to her sub
    assert (await login_page(hub, "alice", "alice-password")).status_code == 200
    first = (await hub.get_user("alice"))["auth_state"]
    assert first["identity"] == {"iss": hub.iam.issuer, "sub": alice_sub}
    assert f"Bound hub user alice to sub {alice_sub} at {hub.iam.issuer}" in hub.log_text()

    # every look-alike: 403 with the rule, logged, no hub user, alice's auth_state untouched
    for i, name in enumerate(LOOK_ALIKES):
        page = await login_page(hub, name, f"look-alike-{i}")
        assert page.status_code == 403, (name, page.status_code)
        assert "cannot be used in this hub" in page.text and "neither begin nor end with" in page.text, name
        assert "Traceback" not in page.text
        assert f"Login refused: IAM username {name!r} (sub 00000000-0000-4000-8000-{i:012d})" in hub.log_text()
    async with hub.admin_client() as api:
        names = {u["name"] for u in (await api.get("/users")).json()}
    assert names == {"alice"}
    assert (await hub.get_user("alice"))["auth_state"]["access_token"] == first["access_token"]

    # alice's IAM account is recreated with a new sub: the login is refused, her state is kept
    await hub.iam.stop()
    write_users(users, alice_sub=RECREATED_SUB)
    await hub.iam.start()
    page = await login_page(hub, "alice", "alice-password")
    assert page.status_code == 403
    assert "belongs to another IAM account" in page.text and "identity_rebinds" in page.text
    assert RECREATED_SUB not in page.text and alice_sub not in page.text
    assert (f"Login refused: hub user alice is bound to {alice_sub} at {hub.iam.issuer}, "
            f"the login presented {RECREATED_SUB} at {hub.iam.issuer}") in hub.log_text()
    kept = (await hub.get_user("alice"))["auth_state"]
    assert kept["access_token"] == first["access_token"] and kept["identity"]["sub"] == alice_sub

    # an admin rebinds alice to exactly the new sub (config + restart): the login passes and rebinds
    await hub.stop()
    hub.process.extra_config += f"\nc.IAMAuthenticator.identity_rebinds = {{'alice': {RECREATED_SUB!r}}}\n"
    await hub.start()
    assert (await login_page(hub, "alice", "alice-password")).status_code == 200
    rebound = (await hub.get_user("alice"))["auth_state"]
    assert rebound["identity"] == {"iss": hub.iam.issuer, "sub": RECREATED_SUB}
    assert rebound["access_token"] != first["access_token"]
    assert f"Rebound hub user alice from sub {alice_sub} to sub {RECREATED_SUB}" in hub.log_text()
