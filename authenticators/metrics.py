"""Prometheus metrics of the IAM authenticator, in the hub's own registry (served at /hub/metrics).

JupyterHub serves prometheus_client's default ``REGISTRY``; the collectors are created once per
process (a second authenticator instance, e.g. in tests, reuses them).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Histogram

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REFRESH_DURATION = Histogram(
    "cmsaf_iam_refresh_duration_seconds",
    "Time to refresh one user's tokens at IAM (refresh grant plus all token exchanges).",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

EXCHANGE_DURATION = Histogram(
    "cmsaf_iam_exchange_duration_seconds",
    "Time of one RFC 8693 token exchange at IAM, by exchange name.",
    ["exchange"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

FAILURES = Counter(
    "cmsaf_iam_failures_total",
    "IAM authenticator failures by operation (discovery, jwks, login, refresh, exchange, verify) "
    "and reason (a short label, never a token).",
    ["operation", "reason"],
    registry=REGISTRY,
)

IDP_CALLS = Counter(
    "cmsaf_iam_idp_calls_total",
    "Requests the hub made to IAM's token endpoint, by grant (authorization_code, refresh_token, "
    "token_exchange).",
    ["grant"],
    registry=REGISTRY,
)
