"""``cmsaf-demo``: the whole cmsaf-hub stack on 127.0.0.1, for newcomers and for trying changes.

Starts the dev IAM (HTTPS, dev CA) and JupyterHub with configurable-http-proxy from the repository's
``jupyterhub_config.py``, prints where to go and who can log in, and stops everything on Ctrl-C,
the users' Dask clusters included. Run as root, it creates an OS user per demo account so that each
user's sessions and clusters run as their own (isolated); otherwise it says plainly that they are
not. State (CA, IAM signing key, hub database, crypt keys, 0600) is kept in ``--state-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import secrets
import shutil
import signal
import sys
from pathlib import Path

from cmsaf_hub.service.backends.local import LocalBackend
from cmsaf_hub.service.crypto import new_crypt_key
from devstack.hub import (
    REPO_ROOT,
    HubError,
    HubProcess,
    IAMClientSettings,
    create_system_user,
    port_is_free,
    shared_python,
)
from devstack.datademo import SAMPLES, XCACHE_CLIENT, DemoData, keep_cache_token_fresh, start_demo_data
from devstack.iam import DEFAULT_USERS_FILE, HUB_GRANT_TYPES, DevIAM, DevIAMError
from devstack.xrootd import XRootDError, missing_prerequisites

HUB_CLIENT_ID = "cmsaf-hub"


class LaunchError(Exception):
    """Something the person starting the demo must fix; the message says what and how."""


def _persistent_secret(path: Path, make) -> str:
    """A secret kept across runs (so sessions and auth_state survive a restart), mode 0600."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cmsaf-demo", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8000, help="the hub's public port on 127.0.0.1 (default 8000)")
    p.add_argument("--iam-port", type=int, default=8443, help="the dev IAM's HTTPS port (default 8443)")
    p.add_argument("--service-port", type=int, default=10101,
                   help="the cluster service's port on 127.0.0.1, behind the hub (default 10101)")
    p.add_argument("--gateway-port", type=int, default=8786,
                   help="the port on 127.0.0.1 of the cluster service's dask-gateway scheduler proxy (default 8786)")
    p.add_argument("--state-dir", type=Path, default=REPO_ROOT / ".devstack",
                   help="where the CA, keys and databases are kept (default .devstack/ in the repository)")
    p.add_argument("--no-data", action="store_true",
                   help="do not start the local XRootD origin + XCache with sample files")
    p.add_argument("--token-lifetime", type=int, default=3600,
                   help="access-token lifetime in seconds issued by the dev IAM (default 3600)")
    return p.parse_args(argv)


def check_prerequisites(args: argparse.Namespace) -> None:
    if shutil.which("node") is None:
        raise LaunchError("node is not on PATH: install Node.js 20+ (Debian: apt-get install nodejs npm)")
    if not (REPO_ROOT / "devstack" / "node_modules").is_dir():
        raise LaunchError("the dev stack's Node.js packages are missing: run ./demo (or npm ci --prefix devstack)")
    if not (REPO_ROOT / "jupyterhub_config.py").is_file():
        raise LaunchError(f"cannot read {REPO_ROOT / 'jupyterhub_config.py'}")
    for name, port in (("--port", args.port), ("--iam-port", args.iam_port), ("--service-port", args.service_port),
                       ("--gateway-port", args.gateway_port)):
        if not port_is_free(port):
            raise LaunchError(f"port {port} on 127.0.0.1 is in use: stop what uses it or pass {name} <other port>")


def isolate_users(state: Path, usernames: list[str]) -> tuple[dict[str, str], str]:
    """Make each demo user's sessions and clusters run as their own OS account, if this machine lets us.

    Returns the hub settings (``CMSAF_SAME_USER``...) and the banner's line saying plainly what the
    demo's users are isolated from (nothing, without root: they all run as the demo's own OS user)."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    not_isolated = (f"NOT isolated: every demo user's sessions and clusters run as {me}, so each user's code "
                    "reads the others' tokens and keys")
    if os.geteuid() != 0:
        return {"CMSAF_SAME_USER": "on"}, f"{not_isolated} (start the demo as root to isolate them)"
    python = shared_python(state / "user-env")
    if python is None:
        return {"CMSAF_SAME_USER": "on"}, f"{not_isolated} (no Python that other OS users may run: {sys.executable})"
    created = [name for name in usernames if create_system_user(name)]
    settings = {"CMSAF_SAME_USER": "off"} | ({} if python == sys.executable else {"CMSAF_USER_PYTHON": python})
    made = f"; created OS users {', '.join(created)}" if created else ""
    return settings, f"isolated: each user's sessions and clusters run as their own OS user{made}"


async def stop_clusters(hub_state: Path) -> set[str]:
    """Stop every local cluster the demo's service started (they outlive the service by design)."""
    return await LocalBackend(state_dir=str(hub_state / "cmsaf-local-clusters"), stop_grace=3).remove_all_clusters()


async def run(args: argparse.Namespace) -> None:
    state = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o711)  # the users' sessions and clusters are below it; every secret in it is 0600
    client_secret = _persistent_secret(state / "hub-client-secret", lambda: secrets.token_urlsafe(32))
    crypt_key = _persistent_secret(state / "crypt-key", lambda: secrets.token_hex(32))
    # kept, so that the service re-adopts running clusters after a restart of the demo
    service_key_file = state / "service-crypt-key"
    _persistent_secret(service_key_file, new_crypt_key)
    usernames = [user["username"] for user in json.loads(DEFAULT_USERS_FILE.read_text())["users"]]
    isolation_env, isolation = isolate_users(state, usernames)
    hub = HubProcess(
        state_dir=state / "hub",
        iam=IAMClientSettings(issuer="", client_id=HUB_CLIENT_ID, client_secret=client_secret),
        crypt_key=crypt_key,
        port=args.port,
        env={"CMSAF_SERVICE_PORT": str(args.service_port), "CMSAF_GATEWAY_PROXY_PORT": str(args.gateway_port),
             "CMSAF_SERVICE_CRYPT_KEY_FILE": str(service_key_file),
             **isolation_env},
    )
    data_reason = "turned off (--no-data)" if args.no_data else missing_prerequisites()
    iam = DevIAM(
        state / "iam",
        port=args.iam_port,
        access_token_lifetime=args.token_lifetime,
        clients=[
            {"client_id": HUB_CLIENT_ID, "client_secret": client_secret,
             "redirect_uris": [f"{hub.url}hub/oauth_callback"], "grant_types": HUB_GRANT_TYPES,
             "post_logout_redirect_uris": [f"{hub.url}hub/login"]},
            *([] if data_reason else [dict(XCACHE_CLIENT)]),
        ],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    data = None
    background: list[asyncio.Task] = []
    try:
        await iam.start()
        hub.iam.issuer, hub.iam.ca_cert = iam.issuer, iam.ca_cert
        if not data_reason:
            data = await start_demo_data(iam, state / "data")
            hub.env.update(data.hub_env)
            background.append(asyncio.create_task(keep_cache_token_fresh(iam, data.stack, args.token_lifetime)))
        await hub.start()
        print(banner(hub, iam, data, data_reason, isolation), flush=True)
        await stop.wait()
        print("\ncmsaf-demo: stopping…", flush=True)
    finally:
        for task in background:
            task.cancel()
        await hub.stop()
        stopped = await stop_clusters(hub.state_dir)
        if stopped:
            print(f"cmsaf-demo: stopped {len(stopped)} Dask cluster(s)", flush=True)
        if data:
            await data.stack.stop()
        await iam.stop()


def banner(hub: HubProcess, iam: DevIAM, data: DemoData | None, data_reason: str | None, isolation: str) -> str:
    users = "\n".join(
        f"    {u['username']:<6} password {u['password']:<16} groups {' '.join(u['groups']) or '(none)'}"
        for u in (iam.user(n) for n in ("alice", "bob", "eve"))
    )
    return (
        f"\ncmsaf-hub demo is running.\n"
        f"  Hub:     {hub.url}\n"
        f"  Dask clusters: {hub.url}services/cmsaf/  (API: {hub.url}services/cmsaf/api/v1/)\n"
        f"  Dev IAM: {iam.issuer}  (CA: {iam.ca_cert})\n"
        f"  Users:\n{users}\n"
        f"  Users are {isolation}.\n"
        + (f"  Data:    origin {data.hub_env['CMSAF_XROOTD_ORIGIN']}, XCache {data.hub_env['CMSAF_XCACHE_URL']}; "
           f"samples {', '.join(SAMPLES)} (examples/read-data-on-a-cluster.ipynb)\n"
           if data else f"  Data:    no local XRootD site: {data_reason}\n")
        + f"  Logs:    {hub.log_path}, {iam.log_path}\n"
        + "Press Ctrl-C to stop everything.\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_prerequisites(args)
        asyncio.run(run(args))
    except (LaunchError, HubError, DevIAMError, XRootDError) as e:
        first, *rest = str(e).splitlines() or [""]
        print(f"cmsaf-demo: {first}", file=sys.stderr)
        if rest:
            print("\n".join(rest), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
