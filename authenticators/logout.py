"""Signing out of IAM too, so that another account can sign in (OpenID Connect RP-initiated logout).

A hub logout only clears the hub's cookies: IAM's own session stays, and the next login is silently
the same account again. A user refused (403) because they picked the wrong account could not get
out of it. The hub therefore sends the browser to IAM's ``end_session_endpoint`` (from discovery)
with the hub's client id and where to come back to, on logout and from the refusal page.
"""

from __future__ import annotations

import html

from oauthenticator.oauth2 import OAuthCallbackHandler, OAuthLogoutHandler
from tornado import web
from tornado.httputil import url_concat


def end_session_url(endpoint: str, client_id: str, post_logout_redirect_uri: str) -> str:
    """IAM's sign-out URL that returns to ``post_logout_redirect_uri`` (which IAM must have registered)."""
    return url_concat(endpoint, {"client_id": client_id, "post_logout_redirect_uri": post_logout_redirect_uri})


def login_url_beside(callback_url: str) -> str:
    """The hub's login page next to its OAuth callback: ``.../hub/oauth_callback`` -> ``.../hub/login``."""
    base, _, _ = callback_url.rstrip("/").rpartition("/")
    return f"{base}/login"


def refusal_html(message: str, switch_url: str | None, issuer: str) -> str:
    """The 403 page's text: the refusal once, then how to sign in with another account.

    Two paragraphs: JupyterHub's error.html puts ``message_html`` inside one ``<p>``.
    """
    if switch_url:
        how = f'<a href="{html.escape(switch_url)}">Sign out of IAM and sign in with another account</a>.'
    else:  # this IAM announces no end_session_endpoint
        how = f"To use another account, sign out at {html.escape(issuer)} first, then log in again."
    return f"{html.escape(message)}</p><p>{how}"


class IAMCallbackHandler(OAuthCallbackHandler):
    """oauthenticator's callback; its refusals (403) offer a way to switch account."""

    def write_error(self, status_code: int, **kwargs) -> None:
        exception = (kwargs.get("exc_info") or (None, None, None))[1]
        if status_code == 403 and isinstance(exception, web.HTTPError):
            # JupyterHub shows an HTTPError without a reason as its heading and again below it
            exception.reason = exception.reason or "Forbidden"
            exception.jupyterhub_html_message = refusal_html(
                exception.get_message(), self.authenticator.iam_sign_out_url(self), self.authenticator.issuer)
        super().write_error(status_code, **kwargs)


class IAMLogoutHandler(OAuthLogoutHandler):
    """The hub's logout, then IAM's (when ``end_iam_session_on_logout`` and IAM announces the endpoint)."""

    async def render_logout_page(self) -> None:
        authenticator = self.authenticator
        if not authenticator.logout_redirect_url and authenticator.end_iam_session_on_logout:
            url = authenticator.iam_sign_out_url(self)
            if url:
                self.redirect(url)
                return
        await super().render_logout_page()
