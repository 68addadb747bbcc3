"""Log a user into the hub the way a browser does: hub → dev IAM login form → hub OAuth callback."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import httpx

from devstack.pki import trust as trusting


class FormParser(HTMLParser):
    """Collects the first form's action and its named inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._in_form = False
        self._done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and not self._done:
            self.action = a.get("action", "")
            self._in_form = True
        elif tag == "input" and self._in_form and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self._in_form:
            self._in_form = False
            self._done = True


class LoginError(AssertionError):
    """The page after submitting the IdP's form was not what a successful login gives."""


class HubSession(httpx.AsyncClient):
    """An HTTP client carrying a hub login; ``login_response`` is the page the login ended on."""

    login_response: httpx.Response | None = None

    async def __aenter__(self) -> "HubSession":
        # The login already opened the client; ``async with`` only owns its closing.
        return self


async def login_via_iam(hub, username: str, password: str, *, ca_cert: Path | None = None,
                        next_url: str = "", session: HubSession | None = None) -> HubSession:
    """Return a client logged into ``hub`` as ``username`` through the real IdP's login form.

    The client follows redirects like a browser. When the hub refuses the user, the refusal page is in
    ``session.login_response`` (check its status); a form that never leaves the IdP raises LoginError.
    ``session``: the browser to use (its cookies), e.g. one that just signed out; default a new one.
    """
    ca = ca_cert or Path(hub.process.iam.ca_cert)
    session = session or HubSession(verify=trusting(ca), follow_redirects=True, timeout=30)
    start = await session.get(f"{hub.url}hub/oauth_login", params={"next": next_url} if next_url else None)
    start.raise_for_status()
    form = FormParser()
    form.feed(start.text)
    if form.action is None or "login" not in form.fields and "password" not in form.fields:
        await session.aclose()
        raise LoginError(f"no login form at {start.url}: {start.text[:300]!r}")
    form.fields.update(login=username, password=password)
    done = await session.post(urljoin(str(start.url), form.action), data=form.fields)
    if str(done.url).startswith(str(start.url).split("?")[0]) and "password" in done.text:
        await session.aclose()
        raise LoginError(f"the IdP did not accept {username}'s credentials")
    session.login_response = done
    return session


async def confirm_iam_sign_out(session: httpx.AsyncClient, page: httpx.Response) -> httpx.Response:
    """Press "Sign out" on the IdP's sign-out confirmation ``page``; the page the browser ends on."""
    form = FormParser()
    form.feed(page.text)
    if form.action is None or "logout" not in page.text:
        raise LoginError(f"no sign-out form at {page.url}: {page.text[:300]!r}")
    return await session.post(urljoin(str(page.url), form.action), data={**form.fields, "logout": "yes"})
