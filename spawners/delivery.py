"""The token-delivery mixin shared by :class:`IAMLocalSpawner` and :class:`IAMKubeSpawner`.

It holds the configuration of what a session gets (token directory, HTCondor client settings,
XRootD environment, where the cluster service is) and two hooks the spawners call: loading the
session's tokens from ``auth_state`` before start, and adding the session environment in
``get_env()``. How the files reach the session (written locally, or through a Kubernetes Secret)
is each spawner's business.
"""

from __future__ import annotations

from urllib.parse import urlparse

from tornado import web
from traitlets import Dict, List, Unicode, default
from traitlets.config import Configurable

from .tokens import (
    InvalidTokenBundle,
    MissingAuthState,
    SessionSettings,
    SessionToken,
    session_env,
    session_tokens_from_auth_state,
)

try:  # JupyterHub >= 6: a policy refusal, relayed to the user without a traceback
    from jupyterhub.spawner import SpawnException
except ImportError:  # JupyterHub 5: a plain HTTPError is relayed to the user the same way
    SpawnException = None


def spawn_refusal(message: str, reason: str) -> web.HTTPError:
    """The exception that puts ``message`` on the spawn page / in the REST reply (HTTP 400)."""
    if SpawnException is not None:
        return SpawnException(message, reason=reason)
    return web.HTTPError(400, message, reason=reason)


class TokenDeliveryMixin(Configurable):
    """Configuration and hooks for token files + session environment (put before the Spawner)."""

    token_dir = Unicode(
        help="""Directory, as seen inside the session, holding one 0600 file per exchanged token
        (``<dir>/<name>.token``); exported as ``CMSAF_TOKEN_DIR``. Each spawner has a default.""",
    ).tag(config=True)

    bearer_token_name = Unicode(
        "",
        help="""Which exchanged token ``BEARER_TOKEN_FILE`` (WLCG bearer-token discovery, used by
        XRootD and gfal) points at. Empty: ``xrootd`` if the session has it, else ``condor``.""",
    ).tag(config=True)

    condor_token_name = Unicode(
        "condor",
        help="""The exchanged token HTCondor clients use: ``_condor_SCITOKENS_FILE`` points at it.""",
    ).tag(config=True)

    condor_auth_methods = Unicode(
        "SCITOKENS",
        help="""``_condor_SEC_CLIENT_AUTHENTICATION_METHODS`` in the session (set only when the
        session has the condor token). Empty to leave HTCondor's default.""",
    ).tag(config=True)

    condor_collector_host = Unicode(
        "",
        help="""``_condor_COLLECTOR_HOST`` for the session, e.g. ``"cmsaf-cm.example.org:9618"``.
        Empty to omit.""",
    ).tag(config=True)

    condor_schedd_host = Unicode(
        "",
        help="""``_condor_SCHEDD_HOST`` for the session, e.g. ``"cmsaf-schedd.example.org"``.
        Empty to omit.""",
    ).tag(config=True)

    condor_schedd_name = Unicode(
        "",
        help="""``_condor_SCHEDD_NAME`` for the session, e.g. ``"cmsaf-schedd.example.org"``.
        Empty to omit.""",
    ).tag(config=True)

    condor_ca_file = Unicode(
        "",
        help="""``_condor_AUTH_SSL_CLIENT_CAFILE``: the CA bundle, as seen inside the session, that
        signed the schedd's host certificate, e.g. ``"/etc/pki/tls/certs/ca-bundle.crt"``.""",
    ).tag(config=True)

    xrootd_env = Dict(
        value_trait=Unicode(),
        help="""Extra XRootD/XCache variables for the session, e.g.
        ``{"XRD_PLUGINCONFDIR": "/etc/xrootd/client.plugins.d",
        "CMSAF_XCACHE": "root://xcache.example.org:1094"}``. Token variables are set separately.""",
    ).tag(config=True)

    issuer = Unicode(
        "",
        help="""The IAM issuer URL exported as ``CMSAF_ISSUER``. Empty: the authenticator's
        ``issuer`` attribute if it has one.""",
    ).tag(config=True)

    service_name = Unicode(
        "cmsaf",
        help="""Name of the cluster service (hub-managed service) the session talks to.""",
    ).tag(config=True)

    service_url = Unicode(
        "",
        help="""The cluster service's base URL as seen from the session, exported as
        ``CMSAF_SERVICE_URL`` and used by the token refresher, e.g.
        ``"https://cmsaf.example.org/services/cmsaf/"``. Empty: ``<origin>/services/<name>/`` where
        origin is the hub's public URL or else the proxy's (an empty host becomes 127.0.0.1, which
        only suits sessions on the hub's machine).""",
    ).tag(config=True)

    dask_factory_module = Unicode(
        "cmsaf_hub.client",
        help="""``DASK_LABEXTENSION__FACTORY__MODULE``: module of the cluster class the Dask
        JupyterLab extension creates.""",
    ).tag(config=True)

    dask_factory_class = Unicode(
        "HubCluster",
        help="""``DASK_LABEXTENSION__FACTORY__CLASS``: the cluster class the Dask JupyterLab
        extension creates.""",
    ).tag(config=True)

    dask_gateway_proxy_address = Unicode(
        "",
        help="""``host:port`` where sessions' dask-gateway clients reach the service's scheduler proxy
        (the service's ``DaskGateway.proxy_listen``, as seen from sessions: on Kubernetes the address
        of its own Service), exported as ``DASK_GATEWAY__PROXY_ADDRESS=gateway://<host:port>``.
        Empty: the service URL's host on port 8786, dask-gateway's default.""",
    ).tag(config=True)

    server_extensions = List(
        Unicode(),
        ["cmsaf_hub.client.labextension"],
        help="""Jupyter server extensions enabled in every session (``--ServerApp.jpserver_extensions``).
        ``cmsaf_hub.client.labextension`` makes the Dask sidebar list and open every cluster of the user's,
        wherever it was created.""",
    ).tag(config=True)

    @default("server_token_scopes")
    def _default_server_token_scopes(self) -> list[str]:
        # JupyterHub's "server" role, plus access to the cluster service: the refresher, the Dask
        # client and dask-labextension all call the service with $JUPYTERHUB_API_TOKEN.
        return [
            "users:activity!user",
            "access:servers!server",
            f"access:services!service={self.service_name}",
        ]

    #: Names of the tokens this session got at start (set by ``load_session_tokens``).
    session_token_names: tuple[str, ...] = ()

    async def load_session_tokens(self) -> dict[str, SessionToken]:
        """The exchanged tokens from ``auth_state``; a spawn refusal (clear message) without them."""
        auth_state = await self.user.get_auth_state()
        try:
            tokens = session_tokens_from_auth_state(auth_state, self.user.name)
        except (MissingAuthState, InvalidTokenBundle) as e:
            raise spawn_refusal(str(e), reason="auth_state") from None
        if not tokens:
            self.log.warning(
                "%s has no exchanged tokens: the session starts without token files",
                self._log_name,
            )
        self.session_token_names = tuple(sorted(tokens))
        self.log.info(
            "Delivering tokens %s to %s in %s",
            ", ".join(self.session_token_names) or "(none)",
            self._log_name,
            self.resolved_token_dir(),
        )
        return tokens

    def resolved_token_dir(self) -> str:
        """``token_dir`` with ``{username}`` / ``{servername}`` filled in (never a path escape)."""
        parts = {"username": self.user.name, "servername": self.name or "default"}
        for value in parts.values():
            if "/" in value or value in (".", ".."):
                raise spawn_refusal(f"{value!r} cannot name a session directory", reason="name")
        return self.token_dir.format(**parts)

    def session_settings(self) -> SessionSettings:
        return SessionSettings(
            token_dir=self.resolved_token_dir(),
            issuer=self.issuer or _authenticator_issuer(getattr(self, "authenticator", None)),
            service_url=self.service_url or self.default_service_url(),
            bearer_token_name=self.bearer_token_name,
            condor_token_name=self.condor_token_name,
            condor_auth_methods=self.condor_auth_methods,
            condor_collector_host=self.condor_collector_host,
            condor_schedd_host=self.condor_schedd_host,
            condor_schedd_name=self.condor_schedd_name,
            condor_ca_file=self.condor_ca_file,
            xrootd_env=dict(self.xrootd_env),
            dask_factory_module=self.dask_factory_module,
            dask_factory_class=self.dask_factory_class,
            dask_gateway_proxy_address=self.dask_gateway_proxy_address,
        )

    def default_service_url(self) -> str:
        """``<origin><base_url>services/<service_name>/`` from the hub's public or proxy URL."""
        settings = getattr(self.user, "settings", None) or {}
        origin = self.public_url
        if not origin and settings.get("proxy") is not None:
            origin = settings["proxy"].public_url
        if not origin:
            return ""
        parsed = urlparse(origin)
        host = parsed.netloc
        if host.startswith(":"):
            host = "127.0.0.1" + host
        base_url = settings.get("base_url", "/") or "/"
        return f"{parsed.scheme}://{host}{base_url.rstrip('/')}/services/{self.service_name}/"

    def get_args(self) -> list[str]:
        args = super().get_args()
        if self.server_extensions:
            enabled = ", ".join(f"{name!r}: True" for name in self.server_extensions)
            args.append(f"--ServerApp.jpserver_extensions={{{enabled}}}")
        return args

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env.update(session_env(self.session_settings(), self.session_token_names))
        return env

    @property
    def _log_name(self) -> str:
        return f"{self.user.name}/{self.name}" if self.name else self.user.name


def _authenticator_issuer(authenticator: object) -> str:
    issuer = getattr(authenticator, "issuer", "")
    return issuer if isinstance(issuer, str) else ""
