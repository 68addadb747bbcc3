from cmsaf_hub.service.quotas import Limits, QuotaExceeded, Usage, check_create, clamp_workers

import pytest


@pytest.fixture
def limits():
    return Limits(
        max_clusters_per_user=2,
        max_cores_per_user=10,
        max_memory_per_user=40,
        max_workers_per_cluster=6,
        max_cores_per_cluster=8,
        max_memory_per_cluster=100,
    )


def test_create_within_limits(limits):
    check_create(limits, Usage(4, 2, 2), [Usage(1, 1, 1)])


def test_cluster_count_limit_named(limits):
    with pytest.raises(QuotaExceeded, match="max_clusters_per_user"):
        check_create(limits, Usage(0, 1, 1), [Usage(0, 1, 1), Usage(0, 1, 1)])


def test_user_cores_limit_named(limits):
    # 8 cores used elsewhere, 2 left: 2 workers of 2 cores do not fit
    with pytest.raises(QuotaExceeded, match="limit max_cores_per_user: at most 1 workers"):
        check_create(limits, Usage(2, 2, 1), [Usage(4, 2, 1)])


def test_cluster_cores_limit_named(limits):
    with pytest.raises(QuotaExceeded, match="max_cores_per_cluster"):
        check_create(limits, Usage(5, 2, 1), [])


def test_memory_limits(limits):
    with pytest.raises(QuotaExceeded, match="max_memory_per_user"):
        check_create(limits, Usage(3, 1, 16), [])


def test_clamp_reports_the_limit(limits):
    assert clamp_workers(limits, Usage(3, 1, 1), []).reason is None
    clamped = clamp_workers(limits, Usage(20, 1, 1), [])
    assert clamped.value == 6 and "max_workers_per_cluster" in clamped.reason
    clamped = clamp_workers(limits, Usage(20, 1, 1), [Usage(7, 1, 1)])
    assert clamped.value == 3 and "max_cores_per_user" in clamped.reason


def test_zero_means_unlimited():
    unlimited = Limits(
        max_clusters_per_user=0, max_cores_per_user=0, max_memory_per_user=0,
        max_workers_per_cluster=0, max_cores_per_cluster=0, max_memory_per_cluster=0,
    )
    check_create(unlimited, Usage(10_000, 64, 512), [Usage(10_000, 64, 512)] * 50)
    assert clamp_workers(unlimited, Usage(10_000, 1, 1), []).value == 10_000


def test_overcommitted_user_gets_zero_not_negative(limits):
    assert clamp_workers(limits, Usage(2, 1, 1), [Usage(20, 1, 1)]).value == 0
