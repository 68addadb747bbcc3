"""Handlers besides clusters: options schema, the caller's tokens, health, metrics, OpenAPI."""

from __future__ import annotations

import json

from prometheus_client import CONTENT_TYPE_LATEST

from ..options import fields_schema
from .base import APIError, BaseAPIHandler
from .openapi import openapi_document


class OptionsHandler(BaseAPIHandler):
    async def get(self) -> None:
        fields = self.service.cluster_options.for_groups(self.current_user["groups"])
        self.write_json(fields_schema(fields))


class TokensHandler(BaseAPIHandler):
    """The caller's exchanged tokens (docs/architecture.md, "The service's token endpoint")."""

    async def get(self) -> None:
        token = self.hub_auth.get_token(self)
        if token is None:
            raise APIError(403, "the token endpoint needs the caller's hub token")
        # with the caller's own token: the hub refreshes the user's auth state when due
        if not await self.service.hub.touch_user(token):
            raise APIError(403, "the hub did not accept the caller's token")
        auth_state = await self.service.hub.auth_state(self.user_name)
        if not auth_state:
            raise APIError(
                409,
                f"the hub keeps no auth state for {self.user_name}: log in again through IAM "
                "(and the hub needs enable_auth_state)",
            )
        exchanged = auth_state.get("exchanged_tokens") or {}
        tokens = {
            name: {k: entry.get(k) for k in ("access_token", "expires_at", "audience", "scope")}
            for name, entry in exchanged.items()
            if isinstance(entry, dict) and entry.get("access_token")
        }
        issuer = self.service.issuer or (auth_state.get("oauth_user") or {}).get("iss")
        self.write_json({"issuer": issuer, "tokens": tokens})


class HealthHandler(BaseAPIHandler):
    public = True

    async def get(self) -> None:
        self.write_json(self.service.health())


class MetricsHandler(BaseAPIHandler):
    async def get(self) -> None:
        if not self.is_admin:
            raise APIError(403, "metrics are for hub admins")
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.service.metrics.render(self.service.store))


class OpenAPIHandler(BaseAPIHandler):
    public = True

    async def get(self) -> None:
        fields = self.service.cluster_options.for_groups([])
        self.finish(json.dumps(openapi_document(fields_schema(fields), self.service.service_prefix)))


class NotFoundHandler(BaseAPIHandler):
    """Unknown API paths answer JSON, like every other error."""

    public = True

    def prepare(self):
        raise APIError(404, f"no API endpoint {self.request.path}")
