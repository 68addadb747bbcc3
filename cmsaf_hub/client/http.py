"""The REST calls of the cluster service API, one coroutine each, with errors mapped to types.

Only this module does HTTP. It uses tornado's client (already a dependency of Dask and the hub)
and must be created and used on one event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Any
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

from .config import HubConfig
from .errors import AuthenticationError, HubError, HubUnreachableError, error_for_status
from .options import OptionsSchema
from .report import RUNNING, ClusterReport

log = logging.getLogger("cmsaf_hub.client")


def error_message(status: int, reason: str | None, body: bytes) -> str:
    """The service's ``{"error": ...}`` text, else a short description of what came back."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        payload = None
    if isinstance(payload, dict):
        for key in ("error", "message"):  # "message" is what the hub itself uses
            if isinstance(payload.get(key), str) and payload[key]:
                return payload[key]
    return f"HTTP {status}: {reason or 'error'}"


class ServiceAPI:
    """Async calls to ``<service>/api/v1``; holds the HTTP client, so :meth:`close` it."""

    def __init__(self, config: HubConfig):
        self.config = config
        self._http: AsyncHTTPClient | None = None

    def __repr__(self) -> str:
        return f"ServiceAPI<{self.config.service_url}>"

    async def request(
        self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None
    ) -> Any:
        """Make one API call and return its decoded JSON (``None`` for an empty body)."""
        if self._http is None:
            self._http = AsyncHTTPClient(force_instance=True)
        url = self.config.api_url + path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        request = HTTPRequest(
            url,
            method=method,
            headers={
                "Authorization": f"token {self.config.token}",
                "Accept": "application/json",
                **({"Content-Type": "application/json"} if body is not None else {}),
            },
            body=json.dumps(body) if body is not None else (b"" if method == "POST" else None),
            follow_redirects=False,
            ca_certs=self.config.ca_file,
            request_timeout=self.config.request_timeout,
        )
        try:
            response: HTTPResponse = await self._http.fetch(request, raise_error=False)
        except ssl.SSLError as e:
            raise HubUnreachableError(
                f"TLS failure talking to {self.config.service_url}: {e.reason or e}"
            ) from None
        except OSError as e:
            raise HubUnreachableError(
                f"cannot reach {self.config.service_url}: {e.strerror or e}"
            ) from None
        except HTTPClientError as e:  # timeouts (599) raise even with raise_error=False
            raise HubUnreachableError(f"no answer from {self.config.service_url}: {e}") from None
        log.debug("%s %s -> %s", method, url, response.code)
        if 300 <= response.code < 400:
            raise AuthenticationError(
                response.code,
                "the service redirected to a login page: the token was not accepted",
            )
        if response.code >= 400:
            raise error_for_status(
                response.code, error_message(response.code, response.reason, response.body)
            )
        if not response.body:
            return None
        return json.loads(response.body)

    # One method per endpoint of architecture.md's REST API.

    async def get_options(self) -> Any:
        return await self.request("GET", "options")

    async def list_clusters(self) -> list[dict[str, Any]]:
        return await self.request("GET", "clusters")

    async def create_cluster(self, options: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", "clusters", {"options": options})

    async def get_cluster(
        self, cluster_id: str, *, wait: float | None = None, status: str | None = None
    ) -> dict[str, Any]:
        """One cluster; with ``wait``, the service holds the answer until its status differs from ``status``."""
        return await self.request(
            "GET", f"clusters/{quote(cluster_id, safe='')}", query={"wait": wait, "status": status}
        )

    async def scale(self, cluster_id: str, workers: int) -> dict[str, Any]:
        return await self.request(
            "POST", f"clusters/{quote(cluster_id, safe='')}/scale", {"workers": workers}
        )

    async def adapt(self, cluster_id: str, minimum: int, maximum: int) -> dict[str, Any]:
        return await self.request(
            "POST",
            f"clusters/{quote(cluster_id, safe='')}/adapt",
            {"minimum": minimum, "maximum": maximum},
        )

    async def delete_cluster(self, cluster_id: str) -> Any:
        return await self.request("DELETE", f"clusters/{quote(cluster_id, safe='')}")

    async def logs(self, cluster_id: str) -> Any:
        return await self.request("GET", f"clusters/{quote(cluster_id, safe='')}/logs")

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None


#: Seconds one long-poll ``GET /clusters/{id}?wait=`` may last.
LONG_POLL_SECONDS = 20


async def wait_until_running(
    api: ServiceAPI, report: ClusterReport, timeout: float | None = None
) -> ClusterReport:
    """Long-poll the service until the cluster runs; raise with the service's reason if it ends."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while report.status != RUNNING:
        if report.is_ending:
            why = f": {report.reason}" if report.reason else ""
            raise HubError(f"cluster {report.id} {report.status}{why}")
        wait = LONG_POLL_SECONDS
        if deadline is not None:
            left = deadline - loop.time()
            if left <= 0:
                raise HubError(
                    f"cluster {report.id} still {report.status} after {timeout:g} s"
                )
            wait = min(wait, max(1, int(left)))
        report = ClusterReport.from_json(
            await api.get_cluster(report.id, wait=wait, status=report.status)
        )
    return report


def options_schema(response: Any) -> OptionsSchema:
    """``GET /options`` answers a JSON Schema object with ``properties``; check it has that shape."""
    if isinstance(response, dict) and isinstance(response.get("properties"), dict):
        return response
    raise HubError("the service's /options answer is not a JSON Schema object with 'properties'")
