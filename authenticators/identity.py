"""Who a verified IAM user is in the hub: a safe username and the groups they hold.

Pure functions, so the mapping rules are testable without IAM and overridable one at a time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

_UNSAFE = re.compile(r"[^a-z0-9._-]+")


def safe_username(raw: str) -> str:
    """Lower-case, with runs of characters outside ``[a-z0-9._-]`` replaced by ``-``.

    Hub names end up in URLs, file paths, HTCondor job attributes and Kubernetes object names.
    """
    name = _UNSAFE.sub("-", raw.strip().lower()).strip("-.")
    if not name:
        raise ValueError("username claim has no usable characters")
    return name


def normalize_group(group: str) -> str:
    """IAM group paths with exactly one leading ``/``: ``cms/admins`` and ``/cms/admins`` are equal."""
    return "/" + group.strip().strip("/")


def claim_groups(claims: Mapping[str, Any], keys: Iterable[str]) -> set[str]:
    """Groups from the first claim in ``keys`` present in ``claims`` (a list or a space-separated string)."""
    for key in keys:
        value = claims.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            value = value.split()
        return {normalize_group(g) for g in value if isinstance(g, str) and g.strip("/ ")}
    return set()
