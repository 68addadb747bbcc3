"""Fixtures shared by the whole suite: the dev CA, the dev IAM and real hubs, all on loopback.

Every process a fixture starts is stopped when the test ends, also when it fails.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import pytest_asyncio

from devstack.hub import HubProcess, IAMClientSettings
from devstack.iam import HUB_GRANT_TYPES, DevIAM
from devstack.pki import DevPKI, ensure_dev_pki
from tests.harness.hub import RunningHub, admin_service_config, new_admin_token

HUB_CLIENT_ID = "cmsaf-hub"


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
    The config's own cluster service is off unless ``env`` says ``CMSAF_CLUSTER_SERVICE=on``: the
    service tests register it themselves with their settings (tests/service_helpers.py).
    """
    hubs: list[RunningHub] = []
    iams: list[DevIAM] = []

    async def factory(*, extra_config: str = "", env: dict[str, str] | None = None,
                      iam_options: dict | None = None) -> RunningHub:
        n = len(hubs)
        admin_token = new_admin_token()
        secret = secrets.token_urlsafe(24)
        process = HubProcess(
            state_dir=tmp_path / f"hub-{n}",
            iam=IAMClientSettings(issuer="", client_id=HUB_CLIENT_ID, client_secret=secret),
            crypt_key=secrets.token_hex(32),
            extra_config=admin_service_config(admin_token) + extra_config,
            env={"CMSAF_CLUSTER_SERVICE": "off", **(env or {})},
        )
        options = dict(iam_options or {})
        clients = list(options.pop("clients", []))
        clients.append({
            "client_id": HUB_CLIENT_ID,
            "client_secret": secret,
            "redirect_uris": [f"{process.url}hub/oauth_callback"],
            "grant_types": HUB_GRANT_TYPES,
        })
        iam = DevIAM(tmp_path / f"iam-for-hub-{n}", clients=clients, **options)
        iams.append(iam)
        await iam.start()
        process.iam.issuer = iam.issuer
        process.iam.ca_cert = iam.ca_cert
        hub = RunningHub(process=process, admin_token=admin_token, iam=iam)
        hubs.append(hub)
        await hub.start()
        return hub

    yield factory
    for hub in hubs:
        await hub.stop()
    for iam in iams:
        await iam.stop()
