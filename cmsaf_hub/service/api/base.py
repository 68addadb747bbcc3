"""What every API handler shares: hub authentication without blocking, JSON errors, body checks."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from jupyterhub.services.auth import HubOAuthenticated, UserNotAllowed
from tornado import web

if TYPE_CHECKING:
    from ..context import ServiceContext


#: Why a change carried by a browser cookie alone was refused (cross-site request forgery).
XSRF_REFUSAL = "changes need 'Authorization: token <hub API token>', or a page's XSRF token"


class APIError(web.HTTPError):
    """An error whose message goes to the client as ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(status, log_message=None)
        self.message = message


class BaseAPIHandler(HubOAuthenticated, web.RequestHandler):
    """JSON in, JSON out; the current hub user is resolved asynchronously in ``prepare``."""

    #: Handlers that anyone may call (health, the OpenAPI document).
    public = False

    def initialize(self, service: "ServiceContext") -> None:
        self.service = service
        self.hub_auth = service.hub_auth
        self._started = time.perf_counter()

    @property
    def log(self):
        return self.service.log

    # -- authentication ------------------------------------------------------------------------

    def get_current_user(self):
        # set by prepare(); never resolved synchronously (that would block the event loop)
        return getattr(self, "_user_model", None)

    async def prepare(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.service.max_request_body:
            raise APIError(400, f"request body larger than {self.service.max_request_body} bytes")
        if self.public:
            return
        model = await self.hub_auth.get_user(self, sync=False)
        if model is None:
            if self.request.method not in ("GET", "HEAD") and self.hub_auth.cookie_name in self.request.cookies:
                # HubOAuth ignores the login cookie of a change that lacks the page's XSRF token: say so
                raise APIError(403, XSRF_REFUSAL)
            raise APIError(403, "authentication required: send 'Authorization: token <hub API token>'")
        try:
            model = self.check_hub_user(model)
        except UserNotAllowed:
            raise APIError(403, f"{model.get('kind', 'user')} {model.get('name')} may not use this service")
        if self.request.method not in ("GET", "HEAD") and not getattr(self, "_token_authenticated", False):
            # a browser cookie alone must not change anything (cross-site request forgery): the service's
            # pages send their XSRF token in X-XSRFToken, which another site's page cannot read
            try:
                self.check_xsrf_cookie()
            except web.HTTPError:
                raise APIError(403, XSRF_REFUSAL)
        if model.get("kind", "user") != "user":
            raise APIError(403, "only hub users own clusters")
        info = await self.service.hub_user_info(model["name"])
        if info is None:
            raise APIError(403, f"user {model['name']} is not known to the hub")
        self._user_model = {**model, "admin": bool(info.get("admin")), "groups": list(info.get("groups") or [])}

    @property
    def user_name(self) -> str:
        return self.current_user["name"]

    @property
    def is_admin(self) -> bool:
        return bool(self.current_user.get("admin"))

    # -- input ----------------------------------------------------------------------------------

    def json_body(self) -> dict[str, Any]:
        body = self.request.body
        if len(body) > self.service.max_request_body:
            raise APIError(400, f"request body larger than {self.service.max_request_body} bytes")
        if not body.strip():
            return {}
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise APIError(400, "malformed JSON in the request body")
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object")
        return data

    def check_keys(self, data: dict[str, Any], allowed: set[str]) -> None:
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise APIError(422, f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")

    def query_float(self, name: str, *, minimum: float = 0.0) -> float | None:
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return None
        try:
            value = float(raw)
        except ValueError:
            raise APIError(400, f"query parameter {name!r} must be a number")
        if not value >= minimum or value == float("inf"):
            raise APIError(400, f"query parameter {name!r} must be a finite number >= {minimum:g}")
        return value

    # -- output ---------------------------------------------------------------------------------

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, APIError):
            message = exc.message
        elif isinstance(exc, web.HTTPError) and status_code < 500:
            message = exc.log_message % exc.args if exc.log_message else self._reason
        else:
            message = "internal error; see the service log" if status_code >= 500 else self._reason
        self.finish(json.dumps({"error": message}))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, APIError):
            self.log.debug("%s %s -> %d %s", self.request.method, self.request.path, value.status_code, value.message)
        else:
            super().log_exception(typ, value, tb)

    def on_finish(self) -> None:
        self.service.metrics.observe_request(
            self.request.method, type(self).__name__, self.get_status(), time.perf_counter() - self._started
        )
