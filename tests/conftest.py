"""Fixtures shared by the whole suite: the dev CA, the dev IAM and real hubs, all on loopback.

Every process a fixture starts is stopped when the test ends, also when it fails. A skip fails the
run unless tests/skip_policy.py allows it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from devstack.iam import DevIAM
from devstack.pki import DevPKI, ensure_dev_pki
from devstack.hubs import RunningHub, launch_hub, shutdown_hub
from tests.skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401 (hooks)


@pytest.fixture(scope="session")
def dev_state_dir(tmp_path_factory) -> Path:
    """One state directory per test session: the dev CA and the IAM's signing key live here."""
    return tmp_path_factory.mktemp("devstack")


@pytest.fixture(scope="session")
def dev_pki(dev_state_dir) -> DevPKI:
    return ensure_dev_pki(dev_state_dir)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def dev_iam(dev_state_dir, dev_pki):
    """A dev IAM shared by the session, with its default lifetimes."""
    iam = DevIAM(dev_state_dir / "iam-shared")
    await iam.start()
    yield iam
    await iam.stop()


@pytest_asyncio.fixture
async def dev_iam_factory(tmp_path, dev_pki):
    """Start separate dev IAMs (e.g. with 60 s tokens); stopped after the test."""
    started: list[DevIAM] = []

    async def factory(**kwargs) -> DevIAM:
        iam = DevIAM(tmp_path / f"iam-{len(started)}", **kwargs)
        started.append(iam)
        await iam.start()
        return iam

    yield factory
    for iam in started:
        await iam.stop()


@pytest_asyncio.fixture
async def hub_factory(tmp_path, dev_pki):
    """Start real hubs from the repository's ``jupyterhub_config.py``.

    ``await hub_factory(extra_config="...", env={...}, iam_options={...})`` starts a dev IAM for the
    hub (``iam_options`` go to ``DevIAM``: lifetimes, extra clients) with the hub's client registered
    for its callback URL, then the hub with configurable-http-proxy. ``hub.iam`` is that DevIAM.
    The config's own cluster service is off unless ``env`` says ``CMSAF_CLUSTER_SERVICE=on``.
    Everything is stopped after the test, local Dask clusters left by a service included.
    """
    hubs: list[RunningHub] = []

    async def factory(**kwargs) -> RunningHub:
        hub = await launch_hub(tmp_path / f"hub-{len(hubs)}", **kwargs)
        hubs.append(hub)
        return hub

    yield factory
    for hub in hubs:
        await shutdown_hub(hub, leftovers=tmp_path)
