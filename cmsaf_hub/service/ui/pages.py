"""The service's web pages: my clusters, create, one cluster (actions), its logs, and the admin view.

Pages are HTML shells rendered on the server (who may see what is decided here too); the data comes
from the REST API, fetched by ``static/cmsaf-ui.js`` with the page's XSRF token, so the browser never
holds anything but the service's own login cookie.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jinja2 import Environment
from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated, UserNotAllowed
from tornado import web

from .render import STATIC_DIR, HubLook, PageUser, form_fields, template_environment

if TYPE_CHECKING:
    from ..context import ServiceContext


class OAuthCallbackHandler(HubOAuthCallbackHandler):
    """Finishes the browser's hub login with the service's own ``HubOAuth``.

    The OAuth state (with its PKCE verifier) lives in the ``HubOAuth`` that started the login; the
    stock handler would use the class's global instance instead and fail with "Code verifier required".
    """

    def initialize(self, hub_auth: HubOAuth) -> None:
        self.hub_auth = hub_auth


class PageError(web.HTTPError):
    """An error shown to the browser as a page in the hub's look, with a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(status, log_message=None)
        self.message = message


class PageHandler(HubOAuthenticated, web.RequestHandler):
    """Resolves the hub user without blocking (or sends the browser to log in), renders templates."""

    def initialize(self, service: "ServiceContext", env: Environment, look: HubLook) -> None:
        self.service = service
        self.hub_auth = service.hub_auth
        self.env = env
        self.look = look

    def get_current_user(self):
        return getattr(self, "_page_user", None)

    async def prepare(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Frame-Options", "DENY")
        model = await self.hub_auth.get_user(self, sync=False)
        if model is None:
            self.redirect(self.get_login_url())
            return
        try:
            model = self.check_hub_user(model)
        except UserNotAllowed:
            raise PageError(403, f"{model.get('name')} may not use the cluster service.")
        info = await self.service.hub_user_info(model["name"]) if model.get("kind", "user") == "user" else None
        if info is None:
            raise PageError(403, "Only hub users own clusters.")
        self._page_user = PageUser(model["name"], admin=bool(info.get("admin")))
        self._groups = list(info.get("groups") or [])

    def render_page(self, template: str, **context: Any) -> None:
        user = self.current_user
        namespace = self.look.namespace(user, self.xsrf_token.decode() if user else "")
        self.finish(self.env.get_template(template).render(**namespace, **context))

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, PageError):
            message = exc.message
        elif status_code == 502:
            message = "The hub cannot be reached right now; try again in a moment."
        else:
            message = self._reason
        self.render_page("cmsaf_error.html", status_code=status_code, message=message)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, PageError):
            self.service.log.debug("%s %s -> %d %s", self.request.method, self.request.path, value.status_code,
                                   value.message)  # fmt: skip
        else:
            super().log_exception(typ, value, tb)

    def visible_cluster(self, cluster_id: str):
        """The cluster if this user may see it; unknown and foreign clusters look the same."""
        record = self.service.store.get(cluster_id)
        if record is None or (record.owner != self.current_user.name and not self.current_user.admin):
            raise PageError(404, f"No cluster {cluster_id} that you may see.")
        return record


class ClustersPage(PageHandler):
    async def get(self) -> None:
        self.render_page("cmsaf_clusters.html", page="clusters")


class CreatePage(PageHandler):
    async def get(self) -> None:
        fields = form_fields(self.service.cluster_options.for_groups(self._groups))
        self.render_page("cmsaf_create.html", page="create", fields=fields)


class ClusterPage(PageHandler):
    async def get(self, cluster_id: str) -> None:
        record = self.visible_cluster(cluster_id)
        self.render_page("cmsaf_cluster.html", page="cluster", cluster_id=record.id, owner=record.owner)


class LogsPage(PageHandler):
    async def get(self, cluster_id: str) -> None:
        record = self.visible_cluster(cluster_id)
        self.render_page("cmsaf_logs.html", page="logs", cluster_id=record.id)


class AdminPage(PageHandler):
    async def get(self) -> None:
        if not self.current_user.admin:
            raise PageError(403, "The cluster admin page is for hub admins.")
        self.render_page("cmsaf_admin.html", page="admin")


def ui_handlers(prefix: str, service: "ServiceContext") -> list[tuple]:
    """URL specs of the pages under ``prefix`` (the service's, e.g. ``/services/cmsaf/``)."""
    look = HubLook(hub_prefix=service.hub_auth.hub_prefix, service_prefix=prefix)
    kw = {"service": service, "env": template_environment(), "look": look}
    cid = r"([0-9a-zA-Z_-]{1,64})"
    return [
        (prefix + "oauth_callback", OAuthCallbackHandler, {"hub_auth": service.hub_auth}),
        (prefix, ClustersPage, kw),
        (prefix + "clusters/?", ClustersPage, kw),
        (prefix + "clusters/new", CreatePage, kw),
        (prefix + f"clusters/{cid}/?", ClusterPage, kw),
        (prefix + f"clusters/{cid}/logs", LogsPage, kw),
        (prefix + "admin", AdminPage, kw),
        (prefix + "ui/static/(.*)", web.StaticFileHandler, {"path": str(STATIC_DIR)}),
    ]
