"""Every error path of the REST API, quotas under concurrency, owner removal — against a real hub."""

import asyncio

import httpx
import pytest

from tests.service_helpers import service_hub_factory  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

LIMITS = """
c.Limits.max_clusters_per_user = 3
c.Limits.max_cores_per_user = 4
c.Limits.max_workers_per_cluster = 4
c.CmsafService.max_request_body = 2048
"""


async def test_error_paths_quotas_and_owner_removal(service_hub_factory, tmp_path):
    sh = await service_hub_factory(config=LIMITS)
    alice_token = await sh.hub.create_user("alice")
    bob_token = await sh.hub.create_user("bob")

    async with sh.client(alice_token) as alice, sh.client(bob_token) as bob:
        # -- authentication ---------------------------------------------------------------------
        async with httpx.AsyncClient(base_url=sh.api, timeout=30) as anonymous:
            r = await anonymous.get("clusters")
            assert r.status_code == 403 and "authentication required" in r.json()["error"]
            assert (await anonymous.get("health")).json()["status"] == "ok"
            assert (await anonymous.get("openapi.json")).json()["openapi"].startswith("3.")
        async with sh.client("not-a-token") as forged:
            assert (await forged.get("clusters")).status_code == 403

        # -- malformed input: 400/422 with {"error"}, never 500 ------------------------------------
        cases = [
            ("post", "clusters", b"{not json", 400, "malformed JSON"),
            ("post", "clusters", b"[1, 2]", 400, "must be a JSON object"),
            ("post", "clusters", b'{"options": {}, "extra": 1}', 422, "unknown field 'extra'"),
            ("post", "clusters", b'{"options": {"gpus": 1}}', 422, "unknown option 'gpus'"),
            ("post", "clusters", b'{"options": {"cores": "many"}}', 422, "'cores' must be an integer"),
            ("post", "clusters", b'{"options": {"cores": 99}}', 422, "'cores' must be at most 8"),
            ("post", "clusters", b'{"options": {"workers": -1}}', 422, "'workers' must be at least 0"),
            ("post", "clusters", b'{"options": 5}', 422, "options must be a JSON object"),
            ("post", "clusters", b'{"options": {"memory": 1e999}}', 422, "'memory' must be a number"),
            ("post", "clusters", b'{"options": {"memory": NaN}}', 422, "'memory' must be a number"),
            ("post", "clusters", b'{"x": "' + b"a" * 4096 + b'"}', 400, "larger than 2048 bytes"),
            ("get", "clusters/nope", None, 404, "no cluster 'nope'"),
            ("get", "no/such/endpoint", None, 404, "no API endpoint"),
            ("delete", "clusters/" + "0" * 32, None, 404, "no cluster"),
            ("post", "clusters/nope/scale", b'{"workers": 1}', 404, "no cluster"),
        ]
        for method, path, body, status, message in cases:
            r = await alice.request(method, path, content=body)
            assert r.status_code == status, (path, body, r.text)
            assert message in r.json()["error"], (path, body, r.text)

        # -- quotas hold exactly under 50 concurrent creates ----------------------------------------
        results = await asyncio.gather(
            *[alice.post("clusters", json={"options": {"workers": 0, "cores": 1}}) for _ in range(50)]
        )
        codes = sorted(r.status_code for r in results)
        assert codes.count(201) == 3 and codes.count(409) == 47, codes
        assert all("limit max_clusters_per_user" in r.json()["error"] for r in results if r.status_code == 409)
        mine = (await alice.get("clusters")).json()
        assert len(mine) == 3
        cid = mine[0]["id"]

        # core quota across clusters: 4 cores in total, scaling is clamped and says why
        r = await alice.post(f"clusters/{cid}/scale", json={"workers": 3})
        assert r.json()["workers"]["requested"] == 3 and r.json()["clamped"] is None
        r = await alice.post(f"clusters/{mine[1]['id']}/scale", json={"workers": 3})
        assert r.json()["workers"]["requested"] == 1
        assert "max_cores_per_user" in r.json()["clamped"]

        for body, message in [
            ({"workers": -2}, "'workers' must not be negative"),
            ({"workers": "2"}, "'workers' must be an integer"),
            ({"workers": True}, "'workers' must be an integer"),
            ({}, "'workers' must be an integer"),
            ({"workers": 1, "cores": 2}, "unknown field 'cores'"),
        ]:
            r = await alice.post(f"clusters/{cid}/scale", json=body)
            assert r.status_code == 422 and message in r.json()["error"], r.text
        r = await alice.post(f"clusters/{cid}/adapt", json={"minimum": 3, "maximum": 1})
        assert r.status_code == 422 and "must not exceed" in r.json()["error"]
        for wait in ("soon", "-1", "inf", "nan"):
            r = await alice.get(f"clusters/{cid}", params={"wait": wait})
            assert r.status_code == 400 and "'wait'" in r.json()["error"], (wait, r.text)

        # -- the token endpoint without auth state: a clear 409 ------------------------------------
        r = await alice.get("tokens")
        assert r.status_code == 409 and "no auth state for alice" in r.json()["error"]

        # -- bob's cluster stops when bob is removed from the hub ----------------------------------
        bob_cluster = (await bob.post("clusters", json={"options": {}})).json()["id"]
        await sh.wait_status(bob, bob_cluster, "running")
        async with sh.hub.admin_client() as admin_api:
            (await admin_api.delete("/users/bob")).raise_for_status()
        admin_token = await sh.hub.create_user("root")
        async with sh.client(admin_token) as admin:
            model = await sh.wait_status(admin, bob_cluster, "stopped")
        assert model["reason"] == "owner bob was removed from the hub"

    assert "Traceback" not in sh.hub.log_text()
