"""The few hub REST calls the service makes, with its own token unless the caller's is given."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest


class HubAPIError(Exception):
    """The hub answered unexpectedly; the message holds no token."""


class HubAPI:
    def __init__(self, api_url: str, token: str, *, user_cache_seconds: float = 60.0, timeout: float = 20.0):
        self.api_url = api_url.rstrip("/") + "/"
        self._token = token
        self.user_cache_seconds = user_cache_seconds
        self.timeout = timeout
        self._users: dict[str, tuple[float, dict[str, Any] | None]] = {}

    def __repr__(self) -> str:
        return f"HubAPI({self.api_url!r}, token=<hidden>)"

    async def _get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        request = HTTPRequest(
            self.api_url + path,
            headers={"Authorization": f"token {token or self._token}", "Accept": "application/json"},
            request_timeout=self.timeout,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as e:
            raise HubAPIError(f"cannot reach the hub API at {self.api_url}: {e}") from None
        if response.code >= 500 or response.code == 599:
            raise HubAPIError(f"the hub API answered {response.code} to GET {path}")
        body = json.loads(response.body) if response.body else None
        return response.code, body

    async def user(self, name: str, *, fresh: bool = False) -> dict[str, Any] | None:
        """The hub's model of ``name`` (admin flag, groups), cached; None if the hub has no such user."""
        now = time.monotonic()
        cached = self._users.get(name)
        if cached and not fresh and now - cached[0] < self.user_cache_seconds:
            return cached[1]
        code, body = await self._get(f"users/{quote(name, safe='')}")
        if code == 404:
            model = None
        elif code == 200:
            model = {"name": body["name"], "admin": bool(body.get("admin")), "groups": body.get("groups") or []}
        else:
            raise HubAPIError(f"the hub API answered {code} when asked about user {name!r}")
        self._users[name] = (now, model)
        return model

    async def touch_user(self, caller_token: str) -> bool:
        """``GET /user`` with the caller's token: the hub runs ``refresh_user`` when it is due."""
        code, _ = await self._get("user", token=caller_token)
        return code == 200

    async def auth_state(self, name: str) -> dict[str, Any] | None:
        """The user's auth_state (needs the service's ``admin:auth_state`` scope)."""
        code, body = await self._get(f"users/{quote(name, safe='')}")
        if code != 200:
            return None
        return body.get("auth_state")
