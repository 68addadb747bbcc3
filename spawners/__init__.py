"""Spawners that deliver audience-scoped tokens into sessions as files, kept fresh.

``IAMLocalSpawner`` (entry point ``cmsaf-local``) and ``IAMKubeSpawner`` (``cmsaf-kube``) share
one token design (``tokens``, ``delivery``); ``refresher``/``session`` run inside the session.
The spawner classes are imported lazily so the in-session modules stay light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["IAMKubeSpawner", "IAMLocalSpawner"]


def __getattr__(name: str) -> Any:
    if name == "IAMLocalSpawner":
        from .local import IAMLocalSpawner

        return IAMLocalSpawner
    if name == "IAMKubeSpawner":
        from .kube import IAMKubeSpawner

        return IAMKubeSpawner
    raise AttributeError(f"module 'spawners' has no attribute {name!r}")
