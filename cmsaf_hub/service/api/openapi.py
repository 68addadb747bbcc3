"""The OpenAPI 3 document of the REST API, built from the live options schema (pure)."""

from __future__ import annotations

from typing import Any

CLUSTER_ID = {"name": "cluster_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(description: str, ref: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    texts = {
        400: "Malformed request (JSON, query, size)",
        403: "Not authenticated or not allowed",
        404: "No such cluster (or not yours)",
        409: "Conflicts with a limit or the cluster's state",
        422: "Invalid values",
        502: "The backend failed",
    }
    return {str(c): _error(texts[c]) for c in codes}


def openapi_document(options_schema: dict[str, Any], service_prefix: str) -> dict[str, Any]:
    """The document served at ``/api/v1/openapi.json``."""
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    count = {"type": "integer", "minimum": 0}
    schemas = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "ClusterOptions": options_schema,
        "Workers": {
            "type": "object",
            "required": ["requested", "pending", "running", "held", "failed", "held_reasons"],
            "properties": {
                "requested": count, "pending": count, "running": count, "held": count, "failed": count,
                "held_reasons": {"type": "array", "items": {"type": "string"}},
            },
        },
        "Cluster": {
            "type": "object",
            "required": ["id", "owner", "options", "status", "reason", "dashboard_link", "scheduler_address",
                         "workers", "adapt", "created", "started", "stopped"],
            "properties": {
                "id": {"type": "string"},
                "owner": {"type": "string"},
                "options": {"type": "object"},
                "status": {"type": "string", "enum": ["pending", "starting", "running", "stopping", "stopped", "failed"]},
                "reason": {"type": ["string", "null"]},
                "dashboard_link": {"type": ["string", "null"]},
                "scheduler_address": {"type": ["string", "null"],
                                      "description": "ws(s)://…/comm: the websocket relay (plain distributed)"},
                "fast_scheduler_address": {
                    "type": ["string", "null"],
                    "description": "hub(s)://…/tls: Dask's TLS comm through the hub (cmsaf-hub's comm backends)",
                },
                "workers": {"$ref": "#/components/schemas/Workers"},
                "adapt": {
                    "type": ["object", "null"],
                    "properties": {"minimum": count, "maximum": count},
                },
                "created": {"type": "string", "format": "date-time"},
                "started": nullable_time,
                "stopped": nullable_time,
                "clamped": {"type": ["string", "null"], "description": "Why scale/adapt lowered the request"},
            },
        },
    }  # fmt: skip
    cluster = "#/components/schemas/Cluster"
    paths = {
        "/options": {"get": {
            "summary": "The cluster options you may set (JSON Schema; bounds depend on your hub groups)",
            "responses": {"200": {"description": "JSON Schema of ClusterOptions",
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          **_errors(403)},
        }},
        "/clusters": {
            "get": {
                "summary": "Your clusters (admins: ?all=true for everyone's)",
                "parameters": [{"name": "all", "in": "query", "schema": {"type": "boolean"}}],
                "responses": {"200": {"description": "Clusters", "content": {"application/json": {
                    "schema": {"type": "array", "items": {"$ref": cluster}}}}}, **_errors(403)},
            },
            "post": {
                "summary": "Create a cluster",
                "requestBody": _body({"type": "object", "additionalProperties": False,
                                      "properties": {"options": {"$ref": "#/components/schemas/ClusterOptions"}}}),
                "responses": {"201": _json("The new cluster", cluster), **_errors(400, 403, 409, 422)},
            },
        },
        "/clusters/{cluster_id}": {
            "parameters": [CLUSTER_ID],
            "get": {
                "summary": "One cluster; with wait, held until its status differs from status",
                "parameters": [
                    {"name": "wait", "in": "query", "schema": {"type": "number", "minimum": 0}},
                    {"name": "status", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": _json("The cluster", cluster), **_errors(400, 403, 404)},
            },
            "delete": {
                "summary": "Stop the cluster (idempotent)",
                "responses": {"200": _json("The cluster, stopping or stopped", cluster), **_errors(403, 404)},
            },
        },
        "/clusters/{cluster_id}/scale": {
            "parameters": [CLUSTER_ID],
            "post": {
                "summary": "Ask for a number of workers (turns adaptivity off; clamped to limits)",
                "requestBody": _body({"type": "object", "required": ["workers"], "additionalProperties": False,
                                      "properties": {"workers": count}}),
                "responses": {"200": _json("The cluster; 'clamped' says if the request was lowered", cluster),
                              **_errors(400, 403, 404, 409, 422)},
            },
        },
        "/clusters/{cluster_id}/adapt": {
            "parameters": [CLUSTER_ID],
            "post": {
                "summary": "Scale between minimum and maximum with the scheduler's load",
                "requestBody": _body({"type": "object", "additionalProperties": False,
                                      "properties": {"minimum": count, "maximum": count}}),
                "responses": {"200": _json("The cluster; 'clamped' says if maximum was lowered", cluster),
                              **_errors(400, 403, 404, 409, 422)},
            },
        },
        "/clusters/{cluster_id}/logs": {
            "parameters": [CLUSTER_ID],
            "get": {
                "summary": "Recent scheduler and worker logs, {name: text}",
                "responses": {"200": {"description": "Logs", "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": {"type": "string"}}}}},
                    **_errors(403, 404, 502)},
            },
        },
        "/clusters/{cluster_id}/worker-credential": {
            "parameters": [CLUSTER_ID],
            "get": {
                "summary": "The owner's credential and command for a worker that joins through the hub",
                "responses": {"200": {"description": "Worker credential", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["scheduler_address", "credential", "command"],
                    "properties": {"scheduler_address": {"type": "string"}, "credential": {"type": "string"},
                                   "environment_variable": {"type": "string"},
                                   "command": {"type": "array", "items": {"type": "string"}},
                                   "broker_url": {"type": ["string", "null"], "description":
                                                  "Set CMSAF_BROKER_URL to it for a worker on an outbound-only site"}}}}}},
                    **_errors(403, 404, 409)},
            },
        },
        "/tokens": {"get": {
            "summary": "Your exchanged tokens (the hub refreshes them first when due)",
            "responses": {"200": {"description": "Tokens", "content": {"application/json": {"schema": {
                "type": "object", "required": ["issuer", "tokens"],
                "properties": {"issuer": {"type": ["string", "null"]}, "tokens": {"type": "object"}}}}}},
                **_errors(403, 409)},
        }},
        "/health": {"get": {"summary": "Liveness", "security": [],
                            "responses": {"200": {"description": "OK", "content": {"application/json": {
                                "schema": {"type": "object"}}}}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (admins)",
                             "responses": {"200": {"description": "Prometheus text",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}},
                                           **_errors(403)}}},
        "/openapi.json": {"get": {"summary": "This document", "security": [],
                                  "responses": {"200": {"description": "OpenAPI 3",
                                                        "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": "cmsaf-hub cluster service", "version": "1"},
        "servers": [{"url": "/" + service_prefix.strip("/") + "/api/v1"}],
        "security": [{"hubToken": []}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "hubToken": {"type": "apiKey", "in": "header", "name": "Authorization",
                             "description": "'token <your hub API token>'"},
            },
        },
        "paths": paths,
    }  # fmt: skip
