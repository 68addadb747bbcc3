"""Jupyter server configuration baked into the cmsaf-hub session image.

Configures the Rucio JupyterLab extension from ``CMSAF_RUCIO_*`` variables (set by the admin through
the spawner's environment) so that it authenticates with the session's own token file,
``$CMSAF_TOKEN_DIR/<CMSAF_RUCIO_TOKEN_NAME>.token``, which the token refresher keeps fresh. The
extension reads the file again each time it authenticates, so a refreshed token is picked up
without a restart.
Without ``CMSAF_RUCIO_URL`` the extension is left unconfigured.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

#: Used when ``CMSAF_RUCIO_CA_CERT`` is unset: Debian's system bundle.
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def rucio_instances(environ: Mapping[str, str]) -> list[dict[str, Any]]:
    """The ``RucioConfig.instances`` list for this session, or ``[]`` when Rucio is not configured.

    Raises ``ValueError`` (one line) when the variables present are inconsistent.
    """
    base_url = environ.get("CMSAF_RUCIO_URL", "")
    if not base_url:
        return []
    token_dir = environ.get("CMSAF_TOKEN_DIR", "")
    if not token_dir:
        raise ValueError("CMSAF_RUCIO_URL is set but CMSAF_TOKEN_DIR is not: no token file to use")
    token_name = environ.get("CMSAF_RUCIO_TOKEN_NAME", "rucio")
    mode = environ.get("CMSAF_RUCIO_MODE", "download")
    instance: dict[str, Any] = {
        "name": environ.get("CMSAF_RUCIO_NAME", "cms"),
        "display_name": environ.get("CMSAF_RUCIO_DISPLAY_NAME", "CMS"),
        "rucio_base_url": base_url,
        "rucio_auth_url": environ.get("CMSAF_RUCIO_AUTH_URL", base_url),
        "rucio_ca_cert": environ.get("CMSAF_RUCIO_CA_CERT", SYSTEM_CA_BUNDLE),
        "mode": mode,
        "oidc_auth": "file",
        "oidc_file_name": os.path.join(token_dir, f"{token_name}.token"),
    }
    for key, variable in (("rucio_webui_url", "CMSAF_RUCIO_WEBUI_URL"), ("vo", "CMSAF_RUCIO_VO"),
                          ("site_name", "CMSAF_RUCIO_SITE_NAME")):
        if environ.get(variable):
            instance[key] = environ[variable]
    if mode == "replica":
        missing = [v for v in ("CMSAF_RUCIO_DESTINATION_RSE", "CMSAF_RUCIO_RSE_MOUNT_PATH")
                   if not environ.get(v)]
        if missing:
            raise ValueError(f"CMSAF_RUCIO_MODE=replica needs {' and '.join(missing)}")
        instance["destination_rse"] = environ["CMSAF_RUCIO_DESTINATION_RSE"]
        instance["rse_mount_path"] = environ["CMSAF_RUCIO_RSE_MOUNT_PATH"]
        instance["path_begins_at"] = int(environ.get("CMSAF_RUCIO_PATH_BEGINS_AT", "0"))
    elif mode != "download":
        raise ValueError(f"CMSAF_RUCIO_MODE must be 'download' or 'replica', not {mode!r}")
    return [instance]


_instances = rucio_instances(os.environ)
if _instances:
    c.RucioConfig.instances = _instances  # noqa: F821 (``c`` is the config object Jupyter provides)
    c.RucioConfig.default_instance = _instances[0]["name"]  # noqa: F821
