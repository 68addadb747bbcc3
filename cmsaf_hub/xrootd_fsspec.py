"""``roots://`` for fsspec: the XRootD URLs the facility hands out, readable by uproot, coffea and dask.

fsspec-xrootd registers only ``root://``; the facility's URLs (``cmsaf_hub.data.facility_url``) are
``roots://``, which uproot hands to fsspec like any other scheme. cmsaf-hub registers this class for
``roots`` through the ``fsspec.specs`` entry point (pyproject.toml), so every Python environment that
has cmsaf-hub installed — sessions, Dask workers, the images — resolves ``roots://`` with nothing to
configure. Unlike rewriting the URL to ``root://``, the client keeps asking for TLS from the first
byte, which the ``ztn`` token protocol needs: a bearer token never travels in the clear.
"""

from __future__ import annotations

from typing import Any

from fsspec_xrootd import XRootDFileSystem
from XRootD import client


class SecureXRootDFileSystem(XRootDFileSystem):
    """fsspec-xrootd's filesystem for ``roots://host:port//path`` URLs (XRootD over TLS)."""

    protocol = "roots"

    def __init__(self, hostid: str, *args: Any, **storage_options: Any) -> None:
        super().__init__(hostid, *args, **storage_options)
        # The parent builds its namespace client (stat, ls, locate) with root://; keep TLS for it too.
        self._myclient = client.FileSystem(f"{self.protocol}://{hostid}")
        if not self._myclient.url.is_valid():
            raise ValueError(f"Invalid hostid: {hostid!r}")
