"""Who a verified IAM user is in the hub: a safe username, the IAM account it is bound to, its groups.

Pure functions, so the mapping rules are testable without IAM and overridable one at a time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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


class UsernameRefused(ValueError):
    """An IAM username that is not already a hub username; the message says the rule."""


#: The rule, in words, for refusal pages and the docs (docs/authenticator.md).
USERNAME_RULE = (
    "hub usernames are IAM usernames that are already lower case, made only of a-z, 0-9, '.', '_' and '-', "
    "and neither begin nor end with '.' or '-'"
)


def hub_username(raw: str) -> str:
    """The hub username of the IAM username ``raw``: ``raw`` itself, or :class:`UsernameRefused`.

    Only names that :func:`safe_username` leaves unchanged are accepted, so the mapping is the
    identity and therefore injective: ``Alice``, ``alice.``, ``-alice``, ``alice!``, ``alice `` or
    ``alice<NBSP>`` are refused instead of all becoming ``alice``.
    """
    try:
        safe = safe_username(raw)
    except ValueError:
        safe = None
    if safe != raw:
        raise UsernameRefused(f"The IAM username {raw!r} cannot be used in this hub: {USERNAME_RULE}.")
    return raw


@dataclass(frozen=True)
class Identity:
    """The IAM account behind a hub user: the issuer and the subject (``sub``) it gave."""

    issuer: str
    subject: str

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> "Identity":
        return cls(str(claims["iss"]), str(claims["sub"]))

    def as_dict(self) -> dict[str, str]:
        return {"iss": self.issuer, "sub": self.subject}


class IdentityConflict(Exception):
    """A login presents another IAM account than the one its hub user is bound to."""

    def __init__(self, name: str, bound: Identity, presented: Identity):
        super().__init__(f"hub user {name} is bound to {bound.subject} at {bound.issuer}, "
                         f"the login presented {presented.subject} at {presented.issuer}")
        self.name, self.bound, self.presented = name, bound, presented


def bound_identity(auth_state: Mapping[str, Any] | None, claims_key: str) -> Identity | None:
    """The IAM account a hub user is bound to, from its stored auth_state; None before its first login.

    ``auth_state["identity"]`` holds it; auth_state written before bindings existed still holds the
    verified claims of its tokens under ``claims_key``.
    """
    if not auth_state:
        return None
    stored = auth_state.get("identity")
    if isinstance(stored, Mapping) and stored.get("iss") and stored.get("sub"):
        return Identity(str(stored["iss"]), str(stored["sub"]))
    claims = auth_state.get(claims_key)
    if isinstance(claims, Mapping) and claims.get("iss") and claims.get("sub"):
        return Identity.from_claims(claims)
    return None


def check_binding(name: str, bound: Identity | None, presented: Identity, rebind_subject: str | None) -> bool:
    """Whether a login of ``name`` presenting ``presented`` may go on; True when it rebinds the user.

    A user with no binding yet is bound by this login. A different issuer or subject is an
    :class:`IdentityConflict`, unless an admin named exactly the presented subject for ``name``
    (``rebind_subject``).
    """
    if bound is None or bound == presented:
        return False
    if rebind_subject is not None and rebind_subject == presented.subject:
        return True
    raise IdentityConflict(name, bound, presented)


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
