"""cmsaf-hub's JupyterHub configuration.

Works as is for the local stack started by ``./demo`` (SQLite, local sessions, the dev IAM), and reads
production settings from ``CMSAF_*`` environment variables (see the README's configuration table).
Secrets may be given as 0600 files (``*_FILE``), which is how Kubernetes Secrets are usually mounted;
secrets given as variables are removed from the hub's environment once read, so that the proxy
(which inherits it) and other children never see them.
"""

import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)

REPO_ROOT = Path(__file__).resolve().parent


def setting(name: str, default: str | None = None, *, required: bool = False, secret: bool = False) -> str | None:
    """``CMSAF_<name>`` from the environment, or the content of the file named by ``CMSAF_<name>_FILE``.

    A ``secret`` variable is removed from the environment once read (children inherit it)."""
    value = os.environ.pop(f"CMSAF_{name}") if secret and f"CMSAF_{name}" in os.environ else os.environ.get(f"CMSAF_{name}")
    path = os.environ.get(f"CMSAF_{name}_FILE")
    if value is None and path:
        try:
            value = Path(path).read_text().strip()
        except OSError as e:
            sys.exit(f"cmsaf-hub config: cannot read CMSAF_{name}_FILE={path}: {e.strerror}")
    if value is None:
        value = default
    if required and not value:
        sys.exit(f"cmsaf-hub config: set CMSAF_{name} (or CMSAF_{name}_FILE); see the README's configuration table")
    return value


def private_sqlite(url: str) -> str:
    """Create a SQLite database file 0600 before its server does (SQLite keeps the mode, and gives
    it to its journals); other URLs pass unchanged."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
    return url


STATE_DIR = Path(setting("STATE_DIR", str(REPO_ROOT / ".devstack")))
STATE_DIR.mkdir(parents=True, exist_ok=True)
# Traversable, not listable: sessions and clusters below it belong to their users; every file the
# hub and the service keep here (databases, keys, cookie secret) is 0600.
STATE_DIR.chmod(0o711)

# auth_state holds the users' IAM tokens: it is only ever stored encrypted.
HUB_CRYPT_KEY = os.environ.pop("JUPYTERHUB_CRYPT_KEY", None)
if HUB_CRYPT_KEY is None and os.environ.get("JUPYTERHUB_CRYPT_KEY_FILE"):
    try:
        HUB_CRYPT_KEY = Path(os.environ["JUPYTERHUB_CRYPT_KEY_FILE"]).read_text().strip()
    except OSError as e:
        sys.exit(f"cmsaf-hub config: cannot read JUPYTERHUB_CRYPT_KEY_FILE: {e.strerror}")
if not HUB_CRYPT_KEY:
    sys.exit("cmsaf-hub config: set JUPYTERHUB_CRYPT_KEY_FILE (a 0600 file holding e.g. `openssl rand -hex 32`) "
             "or JUPYTERHUB_CRYPT_KEY; the demo launcher makes one")
c.CryptKeeper.keys = [key for key in HUB_CRYPT_KEY.split(";") if key.strip()]

#: Dev/demo only: sessions and clusters run as the hub's OS user, NOT isolated from each other
#: (the demo sets it when it cannot create OS users). Off: each runs as its user's OS account.
SAME_USER = setting("SAME_USER", "off") == "on"
#: The Python environment of sessions and clusters; every local user must be able to run it.
USER_PYTHON = setting("USER_PYTHON", sys.executable)

# --- where the hub listens -------------------------------------------------------------------------
c.JupyterHub.bind_url = setting("HUB_URL", "http://127.0.0.1:8000/")
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{setting('HUB_INTERNAL_PORT', '8081')}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{setting('PROXY_API_PORT', '8001')}"
_chp = REPO_ROOT / "devstack" / "node_modules" / ".bin" / "configurable-http-proxy"
if _chp.exists():
    c.ConfigurableHTTPProxy.command = [str(_chp)]
c.JupyterHub.db_url = private_sqlite(setting("DB_URL", f"sqlite:///{STATE_DIR / 'jupyterhub.sqlite'}", secret=True))
c.JupyterHub.cookie_secret_file = str(STATE_DIR / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = str(STATE_DIR / "jupyterhub-proxy.pid")

# --- login through INDIGO-IAM (the dev IAM in the demo) ---------------------------------------------
ISSUER = setting("IAM_ISSUER", required=True)
if not ISSUER.endswith("/"):
    ISSUER += "/"
CA_FILE = setting("CA_FILE")

WLCG_AUDIENCE = "https://wlcg.cern.ch/jwt/v1/any"

c.JupyterHub.authenticator_class = "cmsaf-iam"
c.IAMAuthenticator.issuer = ISSUER
c.IAMAuthenticator.client_id = setting("IAM_CLIENT_ID", required=True)
c.IAMAuthenticator.client_secret = setting("IAM_CLIENT_SECRET", required=True, secret=True)
c.IAMAuthenticator.oauth_callback_url = f"{c.JupyterHub.bind_url}hub/oauth_callback"
c.IAMAuthenticator.login_service = "CMS IAM"
c.IAMAuthenticator.scope = ["openid", "profile", "email", "offline_access", "wlcg", "wlcg.groups"]
c.IAMAuthenticator.allowed_groups = set(setting("ALLOWED_GROUPS", "/cms").split())
c.IAMAuthenticator.admin_groups = set(setting("ADMIN_GROUPS", "/cms/admins").split())
c.IAMAuthenticator.manage_groups = True
c.IAMAuthenticator.enable_auth_state = True
# The audience-scoped tokens that sessions, HTCondor jobs and XRootD reads get (RFC 8693 exchange).
c.IAMAuthenticator.token_exchanges = {
    "condor": {"audience": setting("CONDOR_AUDIENCE", WLCG_AUDIENCE),
               "scope": "compute.read compute.create compute.modify compute.cancel"},
    "xrootd": {"audience": setting("XROOTD_AUDIENCE", WLCG_AUDIENCE),
               "scope": setting("XROOTD_SCOPE", "storage.read:/")},
}
if CA_FILE:
    c.IAMAuthenticator.http_request_kwargs = {"ca_certs": CA_FILE}

# --- user sessions --------------------------------------------------------------------------------
HUB_URL = c.JupyterHub.bind_url
c.JupyterHub.spawner_class = "cmsaf-local"
# Sessions run as their user's OS account (JupyterHub's LocalProcessSpawner way), unless SAME_USER.
c.IAMLocalSpawner.run_as_hub_user = SAME_USER
c.IAMLocalSpawner.session_root = str(STATE_DIR / "sessions")
c.IAMLocalSpawner.python = USER_PYTHON
c.IAMLocalSpawner.condor_collector_host = setting("CONDOR_COLLECTOR_HOST", "")
c.IAMLocalSpawner.condor_schedd_host = setting("CONDOR_SCHEDD_HOST", "")
c.IAMLocalSpawner.condor_schedd_name = setting("CONDOR_SCHEDD_NAME", "")
c.IAMLocalSpawner.condor_ca_file = setting("CONDOR_CA_FILE", "")
# Where data is read (docs/data-access.md): the origin, the site XCache, the CA directory for roots://.
DATA_ENV = {name: value for name, value in {
    "CMSAF_XROOTD_ORIGIN": setting("XROOTD_ORIGIN"),
    "CMSAF_XCACHE_URL": setting("XCACHE_URL"),
    "X509_CERT_DIR": setting("X509_CERT_DIR"),
}.items() if value}
c.IAMLocalSpawner.xrootd_env = DATA_ENV
# dask-gateway clients' scheduler proxy (docs/dask-gateway.md): the service listens on this port of
# 127.0.0.1 and sessions' Gateway() connects there; unset: no proxy (Gateway() lists and scales only).
GATEWAY_PROXY_PORT = setting("GATEWAY_PROXY_PORT", "")
if GATEWAY_PROXY_PORT:
    c.IAMLocalSpawner.dask_gateway_proxy_address = f"127.0.0.1:{GATEWAY_PROXY_PORT}"
c.Spawner.default_url = "/lab"

# --- the Dask cluster service (hub-managed service "cmsaf") ----------------------------------------
if setting("CLUSTER_SERVICE", "on") != "off":
    from cmsaf_hub.service.hubconfig import cluster_service

    # Clusters run as their owner's OS user, in their home (notebook modules import on workers),
    # with the sessions' Python; in SAME_USER mode as the hub's user, in the session home.
    backend_args = [f"--LocalBackend.python={USER_PYTHON}"]
    if SAME_USER:
        backend_args.append(f"--LocalBackend.work_dir={STATE_DIR / 'sessions' / '{username}' / 'home'}")
    cluster_service(
        c,
        url=f"http://127.0.0.1:{setting('SERVICE_PORT', '10101')}",
        public_url=HUB_URL,
        db_url=private_sqlite(setting("SERVICE_DB_URL", f"sqlite:///{STATE_DIR / 'cmsaf-service.sqlite'}", secret=True)),
        backend=setting("SERVICE_BACKEND", "local"),
        # a 0600 file (CMSAF_SERVICE_CRYPT_KEY_FILE), or the variable, moved into one by cluster_service
        crypt_key_file=os.environ.get("CMSAF_SERVICE_CRYPT_KEY_FILE"),
        config_file=setting("SERVICE_CONFIG"),
        cwd=str(STATE_DIR),
        # clusters' processes get no environment of the service's: they read data like sessions do
        # with these (for HTCondor workers, CmsafService.cluster_env in CMSAF_SERVICE_CONFIG too)
        cluster_env=DATA_ENV,
        args=(backend_args if setting("SERVICE_BACKEND", "local") == "local" else [])
        + ([f"--DaskGateway.proxy_listen=127.0.0.1:{GATEWAY_PROXY_PORT}"] if GATEWAY_PROXY_PORT else []),
        same_user=SAME_USER,
    )
