"""``IAMAuthenticator``: INDIGO-IAM login with verified JWTs, group mirroring, RFC 8693 token exchange
and refresh ahead of expiry.

Built on oauthenticator's public hooks only (``get_token_info``, ``token_to_user``,
``build_auth_state_dict``, ``update_auth_model``, ``get_user_groups``, ``httpfetch``...). The pieces
it composes live in their own modules: :mod:`.discovery`, :mod:`.jwks`, :mod:`.identity`,
:mod:`.exchange`, :mod:`.refresh`, :mod:`.metrics`, and the provider plumbing in :mod:`.provider`.
"""

from __future__ import annotations

import copy
import time
from inspect import isawaitable

from tornado import web
from traitlets import Bool, Dict, Float, List, Unicode, default, observe, validate

from . import metrics
from .exchange import (
    ExchangeFailed,
    ExchangeSpec,
    build_exchange_params,
    exchange_all,
    exchanged_entry,
    merge_exchanged,
    parse_exchange_specs,
)
from .identity import (
    Identity,
    IdentityConflict,
    UsernameRefused,
    bound_identity,
    check_binding,
    claim_groups,
    hub_username,
    normalize_group,
    safe_username,
)
from .jwks import TokenRejected, unverified_claims
from .provider import DiscoveredOAuthenticator, IAMRefused, JWKSUnavailable
from .refresh import ConsumedRefreshTokens, RetryableError, SingleFlight, refresh_due, with_backoff
from .refresh import refresh_margin as effective_refresh_margin

class IAMAuthenticator(DiscoveredOAuthenticator):
    """Log CMS users in with INDIGO-IAM and keep their tokens (and exchanged tokens) fresh."""

    accepted_audiences = List(
        Unicode(),
        config=True,
        help="""``aud`` values accepted in access tokens (any one must match). Default: the client id.
        IAM puts the requested audience in ``aud``, e.g. ``["https://wlcg.cern.ch/jwt/v1/any"]``.""",
    )
    group_claims = List(
        Unicode(),
        ["wlcg.groups", "groups"],
        config=True,
        help="Claims holding the user's IAM groups, first present wins. Leading ``/`` is normalized.",
    )
    fetch_userinfo = Bool(
        False,
        config=True,
        help="""Also call IAM's userinfo endpoint at login and refresh (one more IdP call each), for
        claims missing from the ID and access tokens.""",
    )
    token_exchanges = Dict(
        config=True,
        help="""RFC 8693 exchanges done at login and every refresh: name -> {"audience", "scope"}, e.g.
        ``{"condor": {"audience": "https://wlcg.cern.ch/jwt/v1/any", "scope": "compute.read compute.create"},
        "xrootd": {"audience": "https://xrootd.example:1094", "scope": "storage.read:/"}}``. Results go to
        ``auth_state["exchanged_tokens"][name]``.""",
    )
    refresh_margin = Float(
        60.0,
        config=True,
        help="""Refresh when less than this many seconds of access-token life remain (or
        ``refresh_margin_fraction`` of the lifetime, whichever is larger; at most half the lifetime).
        Must exceed ``auth_refresh_age`` so an active user is always checked inside the window.""",
    )
    identity_rebinds = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="""Hub users an admin moves to another IAM account: {hub username: new IAM ``sub``}.

        Every hub user is bound to the issuer and ``sub`` of its first login; a later login whose
        username maps to that user but presents another account is refused (403, logged). An entry
        here lets exactly the named ``sub`` log in as that user once more and rebinds the user to it
        (logged as a warning); remove the entry after that login. Example: ``{"alice":
        "6a1f0c1e-8d0b-4b7e-9a55-2f1f1b7a0a01"}`` after alice's IAM account was recreated.""",
    )
    refresh_margin_fraction = Float(
        0.1, config=True, help="Refresh margin as a fraction of the access token's lifetime (0..0.5)."
    )

    @default("auth_refresh_age")
    def _auth_refresh_age_default(self):
        return 30

    @default("enable_auth_state")
    def _enable_auth_state_default(self):
        return True

    @default("manage_groups")
    def _manage_groups_default(self):
        return True

    @default("login_service")
    def _login_service_default(self):
        return "CMS IAM"

    @default("username_claim")
    def _username_claim_default(self):
        return "preferred_username"

    @default("scope")
    def _scope_default(self):
        return ["openid", "profile", "offline_access", "wlcg", "wlcg.groups"]

    @default("custom_403_message")
    def _custom_403_message_default(self):
        groups = ", ".join(sorted(self.allowed_groups)) or "an allowed group"
        return f"Your IAM account is not a member of {groups}; ask your VO administrator for access."

    @validate("allowed_groups", "admin_groups")
    def _normalize_groups(self, proposal):
        return {normalize_group(g) for g in proposal.value}

    @validate("token_exchanges")
    def _validate_token_exchanges(self, proposal):
        parse_exchange_specs(proposal.value)
        return proposal.value

    @observe("auth_refresh_age", "refresh_margin")
    def _check_refresh_timing(self, change):
        if self.auth_refresh_age and self.auth_refresh_age >= self.refresh_margin:
            self.log.warning(
                "auth_refresh_age (%ss) >= refresh_margin (%ss): active users may be checked too late "
                "to refresh before expiry", self.auth_refresh_age, self.refresh_margin,
            )

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._refreshes = SingleFlight()
        self._consumed = ConsumedRefreshTokens()
        #: Access-token lifetimes already warned about (see :meth:`warn_if_checked_too_rarely`).
        self._lifetimes_warned: set[int] = set()

    # --- verification and identity ---------------------------------------------------------------

    async def token_to_user(self, token_info):
        """User claims from the *verified* access and ID tokens (plus userinfo if configured)."""
        try:
            claims = await self.verify_token(
                token_info["access_token"], "access", self.accepted_audiences or [self.client_id]
            )
            if token_info.get("id_token"):
                id_claims = await self.verify_token(token_info["id_token"], "id", [self.client_id])
                if id_claims["sub"] != claims.get("sub", id_claims["sub"]):
                    raise TokenRejected("subject mismatch")
                claims.update(id_claims)
        except TokenRejected as e:
            raise web.HTTPError(403, "IAM's token failed verification (%s)", e.reason) from None
        except JWKSUnavailable as e:
            raise web.HTTPError(503, "%s", e) from None
        if self.fetch_userinfo and self.userdata_url:
            info = await super().token_to_user(token_info)
            if info.get("sub") != claims.get("sub"):
                raise web.HTTPError(403, "IAM's userinfo is about another subject")
            claims.update(info)
        return claims

    def user_info_to_username(self, user_info):
        """The IAM username, refused (403) unless it already is a hub username (see :func:`hub_username`)."""
        raw = super().user_info_to_username(user_info)
        try:
            return hub_username(raw)
        except UsernameRefused as e:
            self.log.warning("Login refused: IAM username %r (sub %s) is not a hub username", raw, user_info.get("sub"))
            raise web.HTTPError(403, "%s", e) from None

    def normalize_username(self, username):
        return super().normalize_username(safe_username(username))

    async def run_post_auth_hook(self, handler, auth_model):
        """Bind the hub user to the IAM account of its first login; refuse (403) any other account."""
        user = handler.find_user(auth_model["name"])
        previous = await user.get_auth_state() if user is not None else None
        bound = bound_identity(previous, self.user_auth_state_key)
        presented = Identity.from_claims(auth_model["auth_state"]["identity"])
        name = auth_model["name"]
        try:
            rebound = check_binding(name, bound, presented, self.identity_rebinds.get(name))
        except IdentityConflict as e:
            self.log.warning("Login refused: %s", e)
            raise web.HTTPError(
                403, "%s",
                f"The hub user {name} belongs to another IAM account than the one you logged in with. "
                "If the account is yours after a change in IAM, ask a hub admin to rebind it "
                "(IAMAuthenticator.identity_rebinds).",
            ) from None
        if rebound:
            self.log.warning("Rebound hub user %s from sub %s to sub %s at %s (identity_rebinds)",
                             name, bound.subject, presented.subject, presented.issuer)
        elif bound is None:
            self.log.info("Bound hub user %s to sub %s at %s", name, presented.subject, presented.issuer)
        return await super().run_post_auth_hook(handler, auth_model)

    async def get_user_groups(self, auth_state: dict):
        """IAM groups from the verified claims (``wlcg.groups``, falling back to ``groups``)."""
        return claim_groups(auth_state.get(self.user_auth_state_key) or {}, self.group_claims)

    def build_auth_state_dict(self, token_info, user_info):
        """oauthenticator's auth_state plus expiries and an (empty) ``exchanged_tokens``."""
        state = super().build_auth_state_dict(token_info, user_info)
        # token_to_user verified this access token moments ago, in the same call
        state["access_token_expires_at"] = float(unverified_claims(token_info["access_token"])["exp"])
        state["refresh_token_expires_at"] = refresh_token_expiry(token_info)
        state["exchanged_tokens"] = {}
        # verified claims (token_to_user): the IAM account this hub user is, or is being, bound to
        state["identity"] = Identity.from_claims(user_info).as_dict()
        return state

    async def update_auth_model(self, auth_model):
        """Groups and admin from IAM, then (for allowed users only) the token exchanges."""
        auth_state = auth_model["auth_state"]
        if self.manage_groups:
            groups = await self.get_user_groups(auth_state)
            auth_model["groups"] = sorted(groups)
            if self.admin_groups and not auth_model["admin"]:
                auth_model["admin"] = bool(groups & self.admin_groups)
        if self.token_exchanges and await self.check_allowed(auth_model["name"], auth_model):
            auth_state["exchanged_tokens"] = await self.exchange_tokens(
                auth_model["name"], auth_state["access_token"], auth_state.get("exchanged_tokens")
            )
        return auth_model

    # --- token exchange --------------------------------------------------------------------------

    async def exchange_tokens(self, username: str, subject_token: str, previous: dict | None) -> dict:
        """All configured exchanges, concurrently; failed ones keep their last good token."""
        specs = parse_exchange_specs(self.token_exchanges)
        outcome = await exchange_all(specs, lambda spec: self._exchange_one(spec, subject_token))
        for name, reason in outcome.failed.items():
            metrics.FAILURES.labels("exchange", reason).inc()
            self.log.warning("Token exchange %r for %s failed (%s); keeping its last good token", name, username, reason)
        return merge_exchanged(previous, outcome.fresh, outcome.failed)

    async def _exchange_one(self, spec: ExchangeSpec, subject_token: str) -> dict:
        credentials = {} if self.basic_auth else {"client_id": self.client_id, "client_secret": self.client_secret}
        params = build_exchange_params(subject_token, spec, credentials)
        with metrics.EXCHANGE_DURATION.labels(spec.name).time():
            try:
                info = await with_backoff(
                    lambda: self.token_request(params, "token_exchange"), self.retry_attempts, self.retry_backoff
                )
            except RetryableError as e:
                raise ExchangeFailed(spec.name, e.reason) from None
            except IAMRefused as e:
                raise ExchangeFailed(spec.name, e.reason) from None
        try:
            claims = await self.verify_token(info["access_token"], "exchanged", [spec.audience])
        except TokenRejected as e:
            raise ExchangeFailed(spec.name, f"verify: {e.reason}") from None
        return exchanged_entry(spec, info["access_token"], claims["exp"], info.get("scope") or claims.get("scope"))

    # --- refresh -----------------------------------------------------------------------------------

    async def refresh_user(self, user, handler=None, **kwargs):
        """True while tokens are fresh; a new auth model once they are due; False to force login.

        Called by the hub at most every ``auth_refresh_age`` per user. Concurrent calls for one user
        share a single refresh; a request that read auth_state before the rotated refresh token was
        stored gets the result of the refresh that spent it.
        """
        if not self.enable_auth_state:
            return True
        auth_state = await user.get_auth_state()
        if self.refresh_user_hook is not None:
            refreshed = self.refresh_user_hook(self, user, auth_state)
            refreshed = await refreshed if isawaitable(refreshed) else refreshed
            if refreshed is not None:
                return refreshed
        if not auth_state or not auth_state.get("access_token"):
            self.log.info("No tokens in auth_state of %s; a new login is needed", user.name)
            return False
        spent = self._consumed.result_for(user.name, auth_state.get("refresh_token"))
        if spent is not None:
            return copy.deepcopy(spent)
        if not self.refresh_is_due(auth_state, time.time()):
            return True
        result = await self._refreshes.run(user.name, lambda: self._refresh(user.name, auth_state))
        return copy.deepcopy(result) if isinstance(result, dict) else result

    def refresh_is_due(self, auth_state: dict, now: float) -> bool:
        """Whether the access token in ``auth_state`` is within the refresh margin of its expiry."""
        expires_at = auth_state.get("access_token_expires_at")
        try:
            claims = unverified_claims(auth_state["access_token"])
            lifetime = float(claims["exp"]) - float(claims.get("iat", claims["exp"]))
        except (TokenRejected, KeyError, TypeError, ValueError):
            return True
        self.warn_if_checked_too_rarely(lifetime)
        return refresh_due(expires_at, lifetime, now, self.refresh_margin, self.refresh_margin_fraction)

    def warn_if_checked_too_rarely(self, lifetime: float) -> None:
        """Warn once per lifetime when the margin IAM's tokens really get is not above ``auth_refresh_age``.

        The configured ``refresh_margin`` may pass the startup check and still be cut to half the
        lifetime of short tokens: a user then checked every ``auth_refresh_age`` can miss the whole
        window, and sessions hold expired exchanged tokens until the next check.
        """
        margin = effective_refresh_margin(lifetime, self.refresh_margin, self.refresh_margin_fraction)
        if not self.auth_refresh_age or margin > self.auth_refresh_age or int(lifetime) in self._lifetimes_warned:
            return
        self._lifetimes_warned.add(int(lifetime))
        self.log.warning(
            "IAM issues %.0f s access tokens: their refresh margin is %.0f s, not above auth_refresh_age "
            "(%s s), so active users may be checked too late to refresh before expiry; set "
            "c.IAMAuthenticator.auth_refresh_age to at most %.0f", lifetime, margin, self.auth_refresh_age,
            max(1.0, margin // 2))

    async def _refresh(self, username: str, auth_state: dict):
        refresh_token = auth_state.get("refresh_token")
        expires_at = float(auth_state.get("access_token_expires_at") or 0)
        still_valid = time.time() < expires_at
        rt_expiry = auth_state.get("refresh_token_expires_at")
        if rt_expiry and time.time() >= rt_expiry:
            metrics.FAILURES.labels("refresh", "refresh token expired").inc()
            self.log.info("The refresh token of %s has expired; a new login is needed", username)
            return False
        if not refresh_token:
            metrics.FAILURES.labels("refresh", "no refresh token").inc()
            self.log.info("IAM gave %s no refresh token; a new login is needed at expiry", username)
            return still_valid
        params = self.build_refresh_token_request_params(refresh_token)
        with metrics.REFRESH_DURATION.time():
            try:
                token_info = await with_backoff(
                    lambda: self.token_request(params, "refresh_token"), self.retry_attempts, self.retry_backoff
                )
            except IAMRefused as e:
                metrics.FAILURES.labels("refresh", e.reason).inc()
                self.log.warning("IAM refused to refresh tokens of %s (%s); a new login is needed", username, e.reason)
                return False
            except RetryableError as e:
                metrics.FAILURES.labels("refresh", e.reason).inc()
                if still_valid:
                    self.log.warning(
                        "IAM unreachable refreshing %s (%s); current tokens stay in use until they expire in %.0fs",
                        username, e.reason, expires_at - time.time(),
                    )
                else:
                    self.log.warning("IAM unreachable refreshing %s (%s) and tokens expired", username, e.reason)
                return still_valid
            if not token_info.get("refresh_token"):
                token_info["refresh_token"] = refresh_token  # IAM did not rotate it
            try:
                model = await self.auth_model_from_token_info(token_info, auth_state.get("exchanged_tokens"))
            except web.HTTPError as e:
                # 503: IAM's keys unavailable, keep working on current tokens; 403: tokens failed verification
                return still_valid if e.status_code == 503 else False
        if model["name"] != username:
            self.log.warning("Refreshed tokens of %s name another user; a new login is needed", username)
            return False
        bound = bound_identity(auth_state, self.user_auth_state_key)
        if bound is not None and Identity.from_claims(model["auth_state"]["identity"]) != bound:
            self.log.warning("Refreshed tokens of %s are of another IAM account; a new login is needed", username)
            return False
        if not await self.check_allowed(username, model):
            self.log.warning("%s is no longer in an allowed IAM group; a new login is needed", username)
            return False
        self._consumed.remember(username, refresh_token, model)
        self.log.info("Refreshed IAM tokens of %s", username)
        return model

    async def auth_model_from_token_info(self, token_info: dict, previous_exchanged: dict | None) -> dict:
        """The same auth model ``authenticate`` builds, keeping last good exchanged tokens."""
        user_info = await self.token_to_user(token_info)
        username = self.normalize_username(self.user_info_to_username(user_info))
        auth_state = self.build_auth_state_dict(token_info, user_info)
        auth_state["exchanged_tokens"] = dict(previous_exchanged or {})
        if self.modify_auth_state_hook is not None:
            auth_state = self.modify_auth_state_hook(self, auth_state)
            auth_state = await auth_state if isawaitable(auth_state) else auth_state
        model = {"name": username, "admin": True if username in self.admin_users else None, "auth_state": auth_state}
        return await self.update_auth_model(model)


def refresh_token_expiry(token_info: dict) -> float | None:
    """When the refresh token expires, if IAM says so (``refresh_expires_in``) or it is a JWT with ``exp``."""
    if token_info.get("refresh_expires_in"):
        return time.time() + float(token_info["refresh_expires_in"])
    refresh_token = token_info.get("refresh_token")
    if refresh_token and refresh_token.count(".") == 2:
        try:
            exp = unverified_claims(refresh_token).get("exp")
        except TokenRejected:
            return None
        return float(exp) if exp else None
    return None
