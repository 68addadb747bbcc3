"""Registering the cluster service in a JupyterHub config (``jupyterhub_config.py`` and tests).

    from cmsaf_hub.service.hubconfig import cluster_service
    cluster_service(c, url="http://127.0.0.1:10101", public_url="https://hub.example/",
                    db_url="sqlite:////srv/cmsaf/service.sqlite")
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .crypto import CRYPT_KEY_ENV, CRYPT_KEY_FILE_ENV, new_crypt_key, write_secret_file

SERVICE_NAME = "cmsaf"
#: What the hub's Services menu calls the service (its name stays ``cmsaf``: it is in every URL).
DISPLAY_NAME = "Dask clusters"
#: The hub's page.html extended to show services' display names (cmsaf_hub/service/ui/hub_templates).
HUB_TEMPLATES = Path(__file__).resolve().parent / "ui" / "hub_templates"
#: Where :func:`cluster_service` keeps the service's crypt key when it is not given a file.
CRYPT_KEY_FILE_NAME = "cmsaf-service-crypt-key"

#: What the service's own hub token may do: look users up (admin flag, groups, existence) and
#: read auth_state for the token endpoint and for backends that submit with the user's tokens.
SERVICE_SCOPES = ["list:users", "read:users", "read:users:groups", "admin:auth_state"]

BACKENDS = {
    "local": "cmsaf_hub.service.backends.local.LocalBackend",
    "htcondor": "cmsaf_hub.service.backends.htcondor.HTCondorBackend",
}


def service_command(*, db_url: str, backend: str = "local", python: str = sys.executable,
                    config_file: str | None = None) -> list[str]:
    """The service's command line (pure)."""
    cmd = [python, "-m", "cmsaf_hub", f"--db-url={db_url}"]
    backend_class = BACKENDS.get(backend, backend)
    cmd.append(f"--CmsafService.backend_class={backend_class}")
    if config_file:
        cmd.append(f"--config={config_file}")
    return cmd


def cluster_service(
    c: Any,
    *,
    url: str,
    public_url: str,
    db_url: str,
    backend: str = "local",
    crypt_key: str | None = None,
    crypt_key_file: str | None = None,
    extra_env: dict[str, str] | None = None,
    cluster_env: dict[str, str] | None = None,
    config_file: str | None = None,
    cwd: str | None = None,
    args: list[str] | None = None,
    same_user: bool | None = None,
) -> dict[str, Any]:
    """Append the managed service ``cmsaf`` and its roles to the JupyterHub config ``c``.

    ``url`` is where the service listens (the hub routes ``/services/cmsaf/`` to it),
    ``public_url`` the hub's public URL (for dashboard links and scheduler addresses),
    ``backend`` "local", "htcondor" or a backend class import string.

    The crypt key (per-cluster secrets at rest) reaches the service as a 0600 file, never in its
    environment, which JupyterHub stores in its database: ``crypt_key_file`` (or
    ``$CMSAF_SERVICE_CRYPT_KEY_FILE``) names one; else ``crypt_key`` (or
    ``$CMSAF_SERVICE_CRYPT_KEY``, removed from the hub's environment so the proxy does not inherit
    it) is written to ``<cwd>/cmsaf-service-crypt-key``; else that file is reused, or made with a
    new key (clusters are re-adopted across restarts as long as it is kept).

    ``extra_env`` is added to the service's environment (no secrets: it is stored);
    ``cluster_env`` becomes ``CmsafService.cluster_env``, the settings of every cluster's processes;
    ``args`` are more command-line settings of the service (e.g. ``--LocalBackend.python=...``).
    ``same_user`` runs local clusters as the service's OS user (``LocalBackend.same_user``: NOT
    isolated); default: whether ``$CMSAF_SAME_USER`` is ``on``, the stack-wide switch that
    jupyterhub_config.py also applies to sessions.
    Every hub user gets ``access:services!service=cmsaf``. Returns the service entry.
    """
    key_file = crypt_key_file or os.environ.get(CRYPT_KEY_FILE_ENV) or _write_crypt_key(
        cwd or os.getcwd(), crypt_key or os.environ.pop(CRYPT_KEY_ENV, None)
    )
    os.environ.pop(CRYPT_KEY_ENV, None)
    env = {CRYPT_KEY_FILE_ENV: key_file, "CMSAF_PUBLIC_URL": public_url, **(extra_env or {})}
    for name in ("PYTHONPATH", "CMSAF_ISSUER"):
        if name in os.environ and name not in env:
            env[name] = os.environ[name]
    command = service_command(db_url=db_url, backend=backend, config_file=config_file)
    command += [f"--CmsafService.cluster_env={name}={value}" for name, value in sorted((cluster_env or {}).items())]
    if os.environ.get("CMSAF_SAME_USER") == "on" if same_user is None else same_user:
        command.append("--LocalBackend.same_user=True")
    command += list(args or [])
    service = {
        "name": SERVICE_NAME,
        "url": url,
        "command": command,
        "environment": env,
        "oauth_no_confirm": True,
        "display": True,
    }
    if cwd:
        service["cwd"] = cwd
    c.JupyterHub.services.append(service)
    # the Services menu's entry: "Dask clusters" rather than the URL name
    c.JupyterHub.template_paths.insert(0, str(HUB_TEMPLATES))  # before the hub's own page.html
    c.JupyterHub.template_vars.update({"service_display_names": {SERVICE_NAME: DISPLAY_NAME}})
    c.JupyterHub.load_roles.append(
        {"name": f"{SERVICE_NAME}-service", "scopes": list(SERVICE_SCOPES), "services": [SERVICE_NAME]}
    )
    _grant_users_access(c.JupyterHub.load_roles, f"access:services!service={SERVICE_NAME}")
    return service


def _write_crypt_key(directory: str, key: str | None) -> str:
    """The service's key file in ``directory`` (0600): ``key``, else the file's key, else a new one."""
    path = Path(directory) / CRYPT_KEY_FILE_NAME
    if key is None and path.exists():
        os.chmod(path, 0o600)
        return str(path)
    Path(directory).mkdir(parents=True, exist_ok=True)
    write_secret_file(path, key or new_crypt_key())
    return str(path)


def _grant_users_access(roles: list[dict[str, Any]], scope: str) -> None:
    """Add ``scope`` to the built-in ``user`` role (creating the override if the config has none).

    ``roles`` is a list, or traitlets' lazy list when the config has not set ``load_roles`` yet.
    """
    for role in roles if isinstance(roles, list) else []:
        if role.get("name") == "user":
            if scope not in role.setdefault("scopes", ["self"]):
                role["scopes"].append(scope)
            return
    roles.append({"name": "user", "scopes": ["self", scope]})
