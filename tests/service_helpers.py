"""The ``service_hub_factory`` fixture: the cluster service under a real hub (devstack/service_hubs.py)."""

from __future__ import annotations

import pytest

from devstack.service_hubs import ServiceHub, start_service_hub


@pytest.fixture
def service_hub_factory(hub_factory, tmp_path):
    """``await service_hub_factory(**kw)`` → a ServiceHub (start_service_hub's keywords); the hub,
    and every local cluster its service left, are stopped by ``hub_factory`` after the test."""
    count = 0

    async def factory(**kwargs) -> ServiceHub:
        nonlocal count
        count += 1
        return await start_service_hub(hub_factory, tmp_path / f"s{count}", **kwargs)

    return factory
