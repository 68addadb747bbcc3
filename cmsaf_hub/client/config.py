"""Where the cluster service is and which token to present, resolved from arguments and environment.

Inside a hub session nothing needs configuring: the spawner sets ``CMSAF_SERVICE_URL`` and
``JUPYTERHUB_API_TOKEN``. From a laptop or a CI job, give the hub's URL and a hub API token, as
arguments, as ``CMSAF_HUB_URL`` / ``CMSAF_TOKEN``, or in Dask's config (``cmsaf.hub-url``,
``cmsaf.token-file``; a file keeps the token out of shell history and process listings).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dask.config

from .errors import ConfigurationError

#: The service's URL prefix below the hub's base URL (architecture.md, "Names shared by every part").
SERVICE_PREFIX = "services/cmsaf/"
#: The REST API below the service URL.
API_PREFIX = "api/v1/"


@dataclass(frozen=True)
class HubConfig:
    """Everything the client needs to reach the service; the token never shows in ``repr``."""

    service_url: str  # always ends with "/"
    token: str = field(repr=False)
    ca_file: str | None = None
    request_timeout: float = 60.0

    @property
    def api_url(self) -> str:
        return self.service_url + API_PREFIX


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def service_url_from_hub_url(hub_url: str) -> str:
    """``https://hub.example/`` (or ``.../hub/``) → ``https://hub.example/services/cmsaf/``."""
    url = _with_slash(hub_url)
    if url.endswith("/hub/"):
        url = url[: -len("hub/")]
    return url + SERVICE_PREFIX


def _read_token_file(path: str) -> str:
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as e:
        raise ConfigurationError(f"cannot read token file {path}: {e.strerror}") from None
    if not token:
        raise ConfigurationError(f"token file {path} is empty")
    return token


def resolve_config(
    *,
    hub_url: str | None = None,
    service_url: str | None = None,
    token: str | None = None,
    token_file: str | None = None,
    ca_file: str | None = None,
    env: Mapping[str, str] | None = None,
) -> HubConfig:
    """Pick the service URL and token: arguments, then ``CMSAF_*``, then the session, then Dask config.

    Pure apart from reading a token file, so every precedence rule is testable with a dict as ``env``.
    """
    env = os.environ if env is None else env
    if service_url:
        url = _with_slash(service_url)
    elif hub_url:
        url = service_url_from_hub_url(hub_url)
    elif env.get("CMSAF_HUB_URL"):
        url = service_url_from_hub_url(env["CMSAF_HUB_URL"])
    elif env.get("CMSAF_SERVICE_URL"):
        url = _with_slash(env["CMSAF_SERVICE_URL"])
    elif dask.config.get("cmsaf.service-url", None):
        url = _with_slash(dask.config.get("cmsaf.service-url"))
    elif dask.config.get("cmsaf.hub-url", None):
        url = service_url_from_hub_url(dask.config.get("cmsaf.hub-url"))
    else:
        raise ConfigurationError(
            "no cluster service configured: set CMSAF_HUB_URL (or pass hub_url=/--hub-url)"
        )
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"service URL must start with http:// or https://, got {url!r}")

    if token:
        resolved_token = token
    elif token_file:
        resolved_token = _read_token_file(token_file)
    elif env.get("CMSAF_TOKEN"):
        resolved_token = env["CMSAF_TOKEN"]
    elif env.get("JUPYTERHUB_API_TOKEN"):
        resolved_token = env["JUPYTERHUB_API_TOKEN"]
    elif dask.config.get("cmsaf.token-file", None):
        resolved_token = _read_token_file(dask.config.get("cmsaf.token-file"))
    else:
        raise ConfigurationError(
            "no hub API token: set CMSAF_TOKEN (create one at <hub>/hub/token) or pass token=/--token-file"
        )
    ca = ca_file or env.get("CMSAF_CA_FILE") or dask.config.get("cmsaf.ca-file", None)
    return HubConfig(service_url=url, token=resolved_token, ca_file=ca)
