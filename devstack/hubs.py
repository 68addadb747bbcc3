"""A running hub for tests and benchmarks: the repository's config plus an admin service they act through."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cmsaf_hub.service.backends.local import LocalBackend
from devstack.hub import HubProcess, IAMClientSettings
from devstack.iam import HUB_GRANT_TYPES, DevIAM

ADMIN_SERVICE = "harness-admin"


def admin_service_config(token: str) -> str:
    """Config text registering a token-only service with the scopes tests need to arrange users."""
    return f"""
c.JupyterHub.services.append({{"name": {ADMIN_SERVICE!r}, "api_token": {token!r}}})
c.JupyterHub.load_roles.append({{
    "name": {ADMIN_SERVICE!r},
    "scopes": ["admin:users", "admin:servers", "admin:groups", "tokens", "admin:auth_state", "list:users",
               "read:users", "groups", "list:services", "read:services"],
    "services": [{ADMIN_SERVICE!r}],
}})
# Granting admin rights to users needs the admin role itself.
c.JupyterHub.load_roles.append({{"name": "admin", "services": [{ADMIN_SERVICE!r}]}})
"""


@dataclass
class RunningHub:
    """What a test gets from ``hub_factory``."""

    process: HubProcess
    admin_token: str = field(repr=False)
    iam: DevIAM

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def api_url(self) -> str:
        return self.process.api_url

    @property
    def log_path(self):
        return self.process.log_path

    def admin_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.api_url, headers={"Authorization": f"token {self.admin_token}"}, timeout=30
        )

    async def create_user(self, name: str, admin: bool = False) -> str:
        """Create ``name`` in the hub (if missing) and return a new API token of theirs."""
        async with self.admin_client() as api:
            r = await api.post(f"/users/{name}", json={"admin": admin})
            if r.status_code not in (201, 409):
                r.raise_for_status()
            if admin and r.status_code == 409:
                (await api.patch(f"/users/{name}", json={"admin": True})).raise_for_status()
        return await self.user_token(name)

    async def user_token(self, name: str, note: str = "test") -> str:
        """A new hub API token for an existing user, with all of that user's permissions."""
        async with self.admin_client() as api:
            r = await api.post(f"/users/{name}/tokens", json={"note": note})
            r.raise_for_status()
            return r.json()["token"]

    async def get_user(self, name: str) -> dict:
        """The hub's user model, including ``auth_state`` (the admin service may read it)."""
        async with self.admin_client() as api:
            r = await api.get(f"/users/{name}")
            r.raise_for_status()
            return r.json()

    async def start(self) -> None:
        await self.process.start()

    async def stop(self) -> None:
        await self.process.stop()

    def log_text(self) -> str:
        return self.process.log_path.read_text(errors="replace")


def new_admin_token() -> str:
    return secrets.token_hex(32)


HUB_CLIENT_ID = "cmsaf-hub"


async def launch_hub(base: Path, *, extra_config: str = "", env: dict[str, str] | None = None,
                     iam_options: dict | None = None) -> RunningHub:
    """A dev IAM with the hub's client registered for its callback URL, then the hub, under ``base``.

    The config's own cluster service is off unless ``env`` says ``CMSAF_CLUSTER_SERVICE=on``: the
    service tests register it themselves with their settings (devstack/service_hubs.py).
    """
    admin_token = new_admin_token()
    secret = secrets.token_urlsafe(24)
    process = HubProcess(
        state_dir=base / "hub",
        iam=IAMClientSettings(issuer="", client_id=HUB_CLIENT_ID, client_secret=secret),
        crypt_key=secrets.token_hex(32),
        extra_config=admin_service_config(admin_token) + extra_config,
        env={"CMSAF_CLUSTER_SERVICE": "off", **(env or {})},
    )
    options = dict(iam_options or {})
    clients = [*options.pop("clients", []), {
        "client_id": HUB_CLIENT_ID, "client_secret": secret,
        "redirect_uris": [f"{process.url}hub/oauth_callback"], "grant_types": HUB_GRANT_TYPES,
        "post_logout_redirect_uris": [f"{process.url}hub/login"],
    }]
    iam = DevIAM(base / "iam", clients=clients, **options)
    await iam.start()
    process.iam.issuer, process.iam.ca_cert = iam.issuer, iam.ca_cert
    hub = RunningHub(process=process, admin_token=admin_token, iam=iam)
    try:
        await hub.start()
    except BaseException:
        await iam.stop()
        raise
    return hub


async def shutdown_hub(hub: RunningHub, leftovers: Path) -> None:
    """Stop the hub and its IAM, then every local Dask cluster started below ``leftovers``.

    Clusters outlive the service (and the hub) by design, so a test ending with clusters running
    would otherwise leak their processes.
    """
    await hub.stop()
    await hub.iam.stop()
    for state_dir in leftovers.rglob("cmsaf-local-clusters"):
        await LocalBackend(state_dir=str(state_dir), stop_grace=2).remove_all_clusters()
