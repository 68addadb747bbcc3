"""What can go wrong when talking to the cluster service, as exception types.

Each failure class maps to one stable exit code of the ``cmsaf-dask`` CLI (see
:data:`EXIT_CODES` in :mod:`cmsaf_hub.client.cli`), so scripts can tell "log in again" from "the hub is
down" from "you asked for something the service refused". Messages never contain tokens.
"""

from __future__ import annotations


class HubError(Exception):
    """Base class of every error the client raises on purpose."""


class ConfigurationError(HubError):
    """The client cannot tell where the service is or which token to use."""


class OptionsError(HubError, ValueError):
    """Cluster options failed validation against the service's ``/options`` schema."""


class HubUnreachableError(HubError):
    """No HTTP answer at all: connection refused, DNS failure, TLS failure or timeout."""


class ServiceResponseError(HubError):
    """The service answered with an HTTP error; ``status`` holds the code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class AuthenticationError(ServiceResponseError):
    """401/403: the token is missing, expired, revoked or not allowed here."""


class ClusterNotFoundError(ServiceResponseError, LookupError):
    """404: no such cluster (or not yours)."""


class RequestRejectedError(ServiceResponseError):
    """Any other 4xx: the service refused the request (bad option, quota, conflict...)."""


class ServiceError(ServiceResponseError):
    """5xx: the service or the hub in front of it failed."""


def error_for_status(status: int, message: str) -> ServiceResponseError:
    """The exception class for an HTTP error ``status``; pure so tests can table it."""
    if status in (401, 403):
        cls: type[ServiceResponseError] = AuthenticationError
    elif status == 404:
        cls = ClusterNotFoundError
    elif 400 <= status < 500:
        cls = RequestRejectedError
    else:
        cls = ServiceError
    return cls(status, message)
