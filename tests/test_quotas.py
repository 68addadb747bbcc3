"""Quotas at their boundaries (0 left, exactly used up, one over) for create, scale and adapt.

The pure functions first, for every limit; then the real service (a real hub, the no-op backend so
no scheduler costs CPU) for the handlers' paths, sequential and concurrent.
"""

import asyncio

import pytest

from cmsaf_hub.service.quotas import Limits, QuotaExceeded, Usage, check_create, clamp_workers
from tests.service_helpers import service_hub_factory  # noqa: F401 (fixture)

#: Each limit alone (everything else unlimited), with a cluster shape whose cost is 1 of its unit
#: per worker, and how one "other cluster" reserving ``n`` of that unit looks.
ONE_LIMIT = {
    "max_workers_per_cluster": (Usage(0, 1, 1), None, "workers"),
    "max_cores_per_cluster": (Usage(0, 1, 1), None, "cores"),
    "max_memory_per_cluster": (Usage(0, 1, 1), None, "GiB"),
    "max_cores_per_user": (Usage(0, 1, 1), lambda n: Usage(n, 1, 0.001), "cores"),
    "max_memory_per_user": (Usage(0, 1, 1), lambda n: Usage(n, 0.001, 1), "GiB"),
}
UNLIMITED = dict(max_clusters_per_user=0, max_cores_per_user=0, max_memory_per_user=0,
                 max_workers_per_cluster=0, max_cores_per_cluster=0, max_memory_per_cluster=0)


def only(name: str, value: float) -> Limits:
    return Limits(**{**UNLIMITED, name: value})


def with_workers(shape: Usage, workers: int) -> Usage:
    return Usage(workers, shape.cores, shape.memory)


@pytest.mark.parametrize("name", ONE_LIMIT)
def test_every_limit_at_its_boundaries_for_create_and_clamp(name):
    shape, other, unit = ONE_LIMIT[name]
    limits = only(name, 4)
    # per-user limits: other clusters use 4 (0 left), 2 (2 left); per-cluster limits: nothing else counts
    cases = [(4, 0), (2, 2)] if other else [(0, 4)]
    for used, left in cases:
        others = [other(used)] if other else []
        # exactly used up: fits, unclamped
        check_create(limits, with_workers(shape, left), others)
        assert clamp_workers(limits, with_workers(shape, left), others).reason is None
        assert clamp_workers(limits, with_workers(shape, left), others).value == left
        # one over: refused / clamped to exactly what is left, naming limit, usage and unit
        with pytest.raises(QuotaExceeded) as refused:
            check_create(limits, with_workers(shape, left + 1), others)
        message = str(refused.value)
        assert message.startswith(f"limit {name} is 4 {unit}"), message
        assert message.endswith(f"at most {left} worker{'' if left == 1 else 's'} fit"), message
        if other:
            assert f"your other active clusters reserve {used:g} {unit}" in message
        clamped = clamp_workers(limits, with_workers(shape, left + 1), others)
        assert clamped.value == left and clamped.reason.startswith(f"clamped to {left} worker"), clamped
        assert f"limit {name} is 4 {unit}" in clamped.reason
    # the limit off (0) is unlimited, never a budget of 0
    assert clamp_workers(only(name, 0), with_workers(shape, 10_000), [other(10_000)] if other else []).value == 10_000


def test_refusal_speaks_in_the_limits_unit():
    """Issue 18: a core limit is explained in cores (workers × cores per worker), not in workers."""
    limits = only("max_cores_per_user", 10)
    with pytest.raises(QuotaExceeded) as refused:
        check_create(limits, Usage(2, 2, 1), [Usage(4, 2, 1)])
    assert str(refused.value) == (
        "limit max_cores_per_user is 10 cores; your other active clusters reserve 8 cores; "
        "this cluster asks for 2 workers × 2 cores = 4 cores; at most 1 worker fit"
    )
    with pytest.raises(QuotaExceeded) as refused:
        check_create(only("max_memory_per_cluster", 8), Usage(3, 1, 4), [])
    assert str(refused.value) == (
        "limit max_memory_per_cluster is 8 GiB; this cluster asks for 3 workers × 4 GiB = 12 GiB; "
        "at most 2 workers fit"
    )


def test_a_used_up_core_budget_is_zero_not_unlimited():
    """The issue's reproduction: three clusters scaled to 2, 2, 0 under max_cores_per_user=2."""
    limits = only("max_cores_per_user", 2)
    held: list[Usage] = []
    for asked in (2, 2, 0):
        got = clamp_workers(limits, Usage(asked, 1, 1), held).value
        held.append(Usage(got, 1, 1))
    assert [u.workers for u in held] == [2, 0, 0]
    assert sum(u.total_cores for u in held) == 2
    # overdrawn (the limit was lowered under running clusters): 0, never negative, never unlimited
    assert clamp_workers(limits, Usage(1, 1, 1), [Usage(5, 1, 1)]).value == 0


def test_cluster_count_at_its_boundary():
    limits = only("max_clusters_per_user", 2)
    check_create(limits, Usage(0, 1, 1), [Usage(0, 1, 1)])  # the second: exactly the limit
    with pytest.raises(QuotaExceeded) as refused:
        check_create(limits, Usage(0, 1, 1), [Usage(0, 1, 1)] * 2)
    assert str(refused.value) == (
        "limit max_clusters_per_user is 2: you hold 2 active clusters; stop one to create another"
    )


def test_tightest_limit_wins_and_is_the_one_named():
    limits = Limits(max_clusters_per_user=0, max_cores_per_user=10, max_memory_per_user=40,
                    max_workers_per_cluster=6, max_cores_per_cluster=8, max_memory_per_cluster=100)
    assert clamp_workers(limits, Usage(3, 1, 1), []).reason is None
    clamped = clamp_workers(limits, Usage(20, 1, 1), [])
    assert clamped.value == 6 and "limit max_workers_per_cluster is 6 workers" in clamped.reason
    clamped = clamp_workers(limits, Usage(20, 1, 1), [Usage(7, 1, 1)])
    assert clamped.value == 3 and "limit max_cores_per_user is 10 cores" in clamped.reason


# -- the real service: the handlers' paths, sequential and concurrent -------------------------------

SERVICE_LIMITS = """
c.Limits.max_clusters_per_user = 3
c.Limits.max_cores_per_user = 2
c.Limits.max_workers_per_cluster = 0
c.Limits.max_cores_per_cluster = 0
c.Limits.max_memory_per_cluster = 0
c.Limits.max_memory_per_user = 0
c.NoopBackend.stop_cluster_seconds = 2
"""


def requested(models: list[dict]) -> list[int]:
    return [m["workers"]["requested"] for m in models]


@pytest.mark.slow
async def test_service_quota_boundaries_sequential_and_concurrent(service_hub_factory):
    sh = await service_hub_factory(backend="benchmarks.noop_backend.NoopBackend", config=SERVICE_LIMITS)
    token = await sh.hub.create_user("alice")
    async with sh.client(token) as alice:
        # create: one over the core budget is refused with limit, usage and unit; exactly the budget fits
        r = await alice.post("clusters", json={"options": {"workers": 3, "cores": 1}})
        assert r.status_code == 409, r.text
        assert r.json()["error"] == ("limit max_cores_per_user is 2 cores; your other active clusters reserve "
                                     "0 cores; this cluster asks for 3 workers × 1 core = 3 cores; at most 2 workers fit")
        r = await alice.post("clusters", json={"options": {"workers": 2, "cores": 1}})
        assert r.status_code == 201, r.text
        first = r.json()["id"]
        # 0 left: a cluster with workers is refused, one without fits
        r = await alice.post("clusters", json={"options": {"workers": 1, "cores": 1}})
        assert r.status_code == 409 and "reserve 2 cores" in r.json()["error"] and "at most 0 workers" in r.json()["error"]
        ids = [first]
        for _ in range(2):
            r = await alice.post("clusters", json={"options": {"workers": 0, "cores": 1}})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        # the cluster count: exactly at the limit now, one more is refused
        r = await alice.post("clusters", json={"options": {"workers": 0, "cores": 1}})
        assert r.status_code == 409 and r.json()["error"].startswith("limit max_clusters_per_user is 3"), r.text

        # scale with 0 left: clamped to 0 and says why; adapt likewise
        r = await alice.post(f"clusters/{ids[1]}/scale", json={"workers": 1})
        assert r.status_code == 200 and r.json()["workers"]["requested"] == 0, r.text
        assert r.json()["clamped"].startswith("clamped to 0 workers: limit max_cores_per_user is 2 cores; "
                                              "your other active clusters reserve 2 cores")
        r = await alice.post(f"clusters/{ids[1]}/adapt", json={"minimum": 0, "maximum": 1})
        assert r.status_code == 200 and r.json()["adapt"]["maximum"] == 0, r.text
        assert "limit max_cores_per_user" in r.json()["clamped"]
        # scale exactly to what is left: free one core, then take exactly it (unclamped), then one over
        r = await alice.post(f"clusters/{first}/scale", json={"workers": 1})
        assert r.json()["workers"]["requested"] == 1 and r.json()["clamped"] is None
        r = await alice.post(f"clusters/{ids[1]}/scale", json={"workers": 1})
        assert r.json()["workers"]["requested"] == 1 and r.json()["clamped"] is None, r.text
        r = await alice.post(f"clusters/{ids[2]}/adapt", json={"minimum": 0, "maximum": 1})
        assert r.json()["adapt"]["maximum"] == 0 and "reserve 2 cores" in r.json()["clamped"], r.text

        # concurrent: everyone back to 0, then all three scale to 2 at once — 2 cores in total
        for cid in ids:
            assert (await alice.post(f"clusters/{cid}/scale", json={"workers": 0})).status_code == 200
        results = await asyncio.gather(*[alice.post(f"clusters/{c}/scale", json={"workers": 2}) for c in ids])
        assert all(r.status_code == 200 for r in results), [r.text for r in results]
        assert sum(requested([r.json() for r in results])) == 2, [r.json()["workers"] for r in results]
        listed = (await alice.get("clusters")).json()
        assert sum(requested([m for m in listed if m["id"] in ids])) == 2
        # concurrent adapt the same way: the maxima add up to the budget, never more
        for cid in ids:
            assert (await alice.post(f"clusters/{cid}/scale", json={"workers": 0})).status_code == 200
        results = await asyncio.gather(
            *[alice.post(f"clusters/{c}/adapt", json={"minimum": 0, "maximum": 2}) for c in ids])
        assert sum(r.json()["adapt"]["maximum"] for r in results) == 2, [r.text for r in results]
        assert sum(1 for r in results if r.json()["clamped"]) >= 1

        # concurrent creates against the core budget: stop all, then 6 creates of 1 worker × 1 core at
        # once under 2 cores and 3 clusters: exactly 2 get in, the rest are refused naming the budget
        for cid in ids:
            assert (await alice.delete(f"clusters/{cid}")).status_code == 200
        for cid in ids:
            await sh.wait_status(alice, cid, "stopped")
        results = await asyncio.gather(
            *[alice.post("clusters", json={"options": {"workers": 1, "cores": 1}}) for _ in range(6)])
        assert sorted(r.status_code for r in results) == [201, 201, 409, 409, 409, 409], [r.text for r in results]
        refusals = {r.json()["error"] for r in results if r.status_code == 409}
        assert refusals == {"limit max_cores_per_user is 2 cores; your other active clusters reserve 2 cores; "
                            "this cluster asks for 1 worker × 1 core = 1 core; at most 0 workers fit"}, refusals

        # a cluster asked to stop frees its share at once: stop one of the two and create the next
        # while the backend still takes its time to remove the first (a user closing and re-creating)
        kept = [r.json()["id"] for r in results if r.status_code == 201]
        assert (await alice.delete(f"clusters/{kept[0]}")).json()["status"] == "stopping"
        r = await alice.post("clusters", json={"options": {"workers": 1, "cores": 1}})
        assert r.status_code == 201, r.text
        assert (await alice.get(f"clusters/{kept[0]}")).json()["status"] == "stopping"  # still on its way out
