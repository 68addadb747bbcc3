"""The cluster service under a real hub with the local backend: real schedulers, real workers."""

import asyncio

import pytest
from distributed import Client

from cmsaf_hub.comm import hub_security
from cmsaf_hub.service.probe import client_security
from tests.service_helpers import service_hub_factory  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


async def test_lifecycle_isolation_and_admin(service_hub_factory, tmp_path):
    sh = await service_hub_factory(config="c.Limits.max_workers_per_cluster = 3\n")
    alice_token = await sh.hub.create_user("alice")
    bob_token = await sh.hub.create_user("bob")
    admin_token = await sh.hub.create_user("root")  # admin by config

    async with sh.client(alice_token) as alice, sh.client(bob_token) as bob, sh.client(admin_token) as admin:
        schema = (await alice.get("options")).json()
        assert schema["properties"]["cores"]["maximum"] == 8

        r = await alice.post("clusters", json={"options": {"workers": 1, "cores": 1, "memory": 1.0}})
        assert r.status_code == 201, r.text
        created = r.json()
        cid = created["id"]
        assert len(cid) == 32 and created["owner"] == "alice" and created["status"] == "pending"
        assert created["workers"]["requested"] == 1

        model = await sh.wait_status(alice, cid, "running")
        assert model["dashboard_link"] == f"{sh.hub.url}services/cmsaf/clusters/{cid}/dashboard/status"
        assert model["scheduler_address"] == f"ws://127.0.0.1:{sh.hub.url.rsplit(':', 1)[1].rstrip('/')}/services/cmsaf/clusters/{cid}/comm"
        assert model["started"] is not None
        await sh.wait_workers(alice, cid, 1)

        # another user cannot tell it exists; the admin sees and lists it
        assert (await bob.get(f"clusters/{cid}")).status_code == 404
        assert (await bob.post(f"clusters/{cid}/scale", json={"workers": 2})).status_code == 404
        assert (await bob.delete(f"clusters/{cid}")).status_code == 404
        assert (await bob.get("clusters")).json() == []
        assert (await bob.get("clusters", params={"all": "true"})).status_code == 403
        rb = await bob.post("clusters", json={"options": {"workers": 0}})
        assert rb.status_code == 201
        everyone = {c["owner"] for c in (await admin.get("clusters", params={"all": "true"})).json()}
        assert everyone == {"alice", "bob"}
        assert (await admin.get(f"clusters/{cid}")).json()["owner"] == "alice"

        # compute on the local backend's workers (direct TLS, with the cluster's credentials)
        record = await _record(sh, cid)
        async with Client(record["address"], security=client_security(record["cert"], record["key"]),
                          asynchronous=True, timeout=30) as client:
            assert await client.submit(lambda x: x * 2, 21) == 42

            # scale up beyond the cap: clamped, and the answer says so
            r = await alice.post(f"clusters/{cid}/scale", json={"workers": 5})
            assert r.status_code == 200
            assert r.json()["workers"]["requested"] == 3
            assert "max_workers_per_cluster" in r.json()["clamped"]
            await sh.wait_workers(alice, cid, 3)
            await client.wait_for_workers(3, timeout=60)
            assert sum(await asyncio.gather(*[client.submit(lambda i: i, i) for i in range(10)])) == 45

            # scattered data has no lineage: it survives scale-down only if workers are retired gracefully
            scattered = await client.scatter(list(range(12)))
            assert len({w for ws in (await client.who_has(scattered)).values() for w in ws}) == 3
            r = await alice.post(f"clusters/{cid}/scale", json={"workers": 1})
            assert r.json()["clamped"] is None
            await sh.wait_workers(alice, cid, 1)
            assert await client.gather(scattered) == list(range(12))

            r = await alice.post(f"clusters/{cid}/adapt", json={"minimum": 2, "maximum": 3})
            assert r.json()["adapt"] == {"minimum": 2, "maximum": 3}
            await sh.wait_workers(alice, cid, 2)

        # through the hub: the forwarder relays to the scheduler's wss listener, owner only
        async with Client(model["scheduler_address"], security=hub_security(alice_token),
                          asynchronous=True, timeout=30) as via_hub:
            assert await via_hub.submit(lambda: "relayed") == "relayed"
        assert await sh.comm_answer(cid, alice_token) == (101, "")
        assert await sh.comm_answer(cid, bob_token) == (403, "You may not use this cluster.")
        dashboard = await alice.get(model["dashboard_link"])
        assert dashboard.status_code == 200 and "<html" in dashboard.text.lower()

        logs = (await alice.get(f"clusters/{cid}/logs")).json()
        assert "Scheduler at" in logs["scheduler"]
        assert record["key"] not in str(logs)

        r = await alice.delete(f"clusters/{cid}")
        assert r.status_code == 200
        # on its way out at once: no links are handed out any more
        assert r.json()["status"] == "stopping" and r.json()["dashboard_link"] is None
        assert r.json()["scheduler_address"] is None
        model = await sh.wait_status(alice, cid, "stopped")
        assert model["reason"] == "stopped by its owner" and model["stopped"]
        assert model["workers"]["running"] == 0 and model["dashboard_link"] is None
        assert (await alice.delete(f"clusters/{cid}")).status_code == 200  # idempotent
        assert (await alice.post(f"clusters/{cid}/scale", json={"workers": 1})).status_code == 409

        # admins manage every cluster
        r = await admin.delete(f"clusters/{rb.json()['id']}")
        assert r.status_code == 200
        assert (await sh.wait_status(bob, rb.json()["id"], "stopped"))["reason"] == "stopped by admin root"

        metrics = await admin.get("metrics")
        assert 'cmsaf_clusters{status="stopped"} 2.0' in metrics.text
        assert (await alice.get("metrics")).status_code == 403

    log = sh.hub.log_text()
    assert record["key"].splitlines()[1] not in log
    assert alice_token not in log


async def _record(sh, cid):
    """The scheduler address and the cluster's TLS material, read from the service database."""
    import sqlalchemy as sa

    from cmsaf_hub.service.crypto import SecretBox, parse_crypt_keys

    engine = sa.create_engine(f"sqlite:///{sh.service_dir / 'service.sqlite'}")
    with engine.connect() as conn:
        row = conn.execute(sa.text("select scheduler_address, tls_cert, tls_key_encrypted from clusters where id=:i"),
                           {"i": cid}).one()
    engine.dispose()
    box = SecretBox(parse_crypt_keys(sh.crypt_key))
    assert b"PRIVATE KEY" not in row[2]
    return {"address": row[0], "cert": row[1], "key": box.decrypt(row[2])}


XSRF_REFUSAL = "changes need 'Authorization: token <hub API token>', or a page's XSRF token"


def targets(model: dict) -> tuple:
    """What a user's change sets (the backend moves the rest on its own)."""
    return model["workers"]["requested"], model["adapt"], model["status"] in ("stopping", "stopped")


async def test_every_cookie_authenticated_write_needs_the_pages_xsrf_token(service_hub_factory):
    """A browser cookie alone changes nothing: create, scale, adapt and stop each refuse it (403) and
    each works with the page's XSRF token; the dask-gateway API never takes a cookie (401)."""
    import re

    from devstack.login import login_via_iam

    sh = await service_hub_factory(backend="benchmarks.noop_backend.NoopBackend")
    prefix = "/services/cmsaf/"
    api = f"{sh.hub.url}services/cmsaf/api/v1/"
    async with await login_via_iam(sh.hub, "alice", "alice-password", next_url=prefix) as browser:
        page = browser.login_response
        assert page.status_code == 200, page.url
        xsrf = {"X-XSRFToken": re.search(r'xsrf_token: "([^"]+)"', page.text).group(1)}
        forged = {"X-XSRFToken": xsrf["X-XSRFToken"][:-4] + "AAAA"}

        async def write(method: str, path: str, body: dict | None, headers: dict | None = None):
            return await browser.request(method, api + path, json=body, headers=headers)

        for headers in (None, forged):
            r = await write("POST", "clusters", {"options": {"workers": 1}}, headers)
            assert r.status_code == 403 and r.json()["error"] == XSRF_REFUSAL, r.text
        assert (await browser.get(api + "clusters")).json() == []  # reads need no token; nothing was created
        r = await write("POST", "clusters", {"options": {"workers": 1}}, xsrf)
        assert r.status_code == 201, r.text
        cid = r.json()["id"]

        for method, path, body, check in [
            ("POST", f"clusters/{cid}/scale", {"workers": 2}, lambda m: m["workers"]["requested"] == 2),
            ("POST", f"clusters/{cid}/adapt", {"minimum": 1, "maximum": 3}, lambda m: m["adapt"] == {"minimum": 1, "maximum": 3}),
            ("DELETE", f"clusters/{cid}", None, lambda m: m["status"] in ("stopping", "stopped")),
        ]:
            before = targets((await browser.get(api + f"clusters/{cid}")).json())
            for headers in (None, forged):
                r = await write(method, path, body, headers)
                assert r.status_code == 403 and r.json()["error"] == XSRF_REFUSAL, (path, r.text)
            assert targets((await browser.get(api + f"clusters/{cid}")).json()) == before  # nothing changed
            r = await write(method, path, body, xsrf)
            assert r.status_code == 200 and check(r.json()), (path, r.text)

        gateway = f"{sh.hub.url}services/cmsaf/gateway/api/v1/clusters/"
        r = await browser.post(gateway, json={"cluster_options": {}}, headers=xsrf)
        assert r.status_code == 401, r.text
        assert r.json()["error"] == "authentication required: 'Authorization: jupyterhub <hub API token>'"
