"""``IAMLocalSpawner``: local-process sessions with token files and the refresher beside them.

The embedded default (used by the demo launcher). Before the notebook server starts, the user's
exchanged tokens are written as 0600 files owned by the session user into a per-server runtime
directory; the server command is wrapped in ``python -m spawners.session --`` so the token
refresher runs for exactly the server's life. The directory is removed when the server stops.

Two ways to map hub users to OS users:

- ``run_as_hub_user = False`` (JupyterHub's usual way): a system user per hub user; sessions
  setuid to it and the files are chowned to it.
- ``run_as_hub_user = True`` (the demo, a container where the hub runs as root and no per-user
  accounts exist): sessions run as the hub's own OS user with ``HOME`` at
  ``<session_root>/<username>/home``. Users are then not isolated from each other: dev only.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import sys
from typing import Callable

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Bool, Unicode, default
from traitlets import List as ListTrait

from .delivery import TokenDeliveryMixin
from .tokenfiles import ensure_token_dir, write_token_files
from .tokens import token_files


class IAMLocalSpawner(TokenDeliveryMixin, LocalProcessSpawner):
    """LocalProcessSpawner whose sessions hold fresh audience-scoped token files."""

    run_as_hub_user = Bool(
        False,
        help="""Run every session as the hub's own OS user instead of a system user named like
        the hub user, with ``HOME`` at ``<session_root>/<username>/home``. For demos and
        single-user development only: sessions are not isolated from each other.""",
    ).tag(config=True)

    session_root = Unicode(
        "/var/lib/cmsaf/sessions",
        help="""Root of the per-user session directories, e.g. ``"/tmp/cmsaf-sessions"``. Holds
        ``<username>/<servername>/tokens`` (the default ``token_dir``) and, with
        ``run_as_hub_user``, ``<username>/home``.""",
    ).tag(config=True)

    session_wrapper = ListTrait(
        Unicode(),
        help="""Command prefix that runs the notebook server with the token refresher beside it;
        the server's command is appended. Empty list: no refresher (token files are then only
        as fresh as the spawn).""",
    ).tag(config=True)

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        # The hub's own jupyterhub-singleuser, so sessions work without the venv on PATH.
        beside_hub = os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")
        return [beside_hub] if os.path.exists(beside_hub) else ["jupyterhub-singleuser"]

    @default("session_wrapper")
    def _default_session_wrapper(self) -> list[str]:
        return [sys.executable, "-m", "spawners.session", "--"]

    @default("token_dir")
    def _default_token_dir(self) -> str:
        return os.path.join(self.session_root, "{username}", "{servername}", "tokens")

    def get_args(self) -> list[str]:
        args = super().get_args()
        if self.run_as_hub_user and os.getuid() == 0:
            # The demo's hub runs as root (a container); Jupyter refuses root unless told.
            args.append("--ServerApp.allow_root=True")
        return args

    def session_home(self) -> str:
        return os.path.join(self.session_root, self.user.name, "home")

    def session_ids(self) -> tuple[int, int]:
        """The uid/gid the session runs as, and owns its token files as."""
        if self.run_as_hub_user:
            return os.getuid(), os.getgid()
        entry = pwd.getpwnam(self.user.name)
        return entry.pw_uid, entry.pw_gid

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        if not self.run_as_hub_user:
            return super().user_env(env)
        env["USER"] = self.user.name
        env["HOME"] = self.session_home()
        env["SHELL"] = pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"
        return env

    def make_preexec_fn(self, name: str) -> Callable[[], None]:
        if not self.run_as_hub_user:
            return super().make_preexec_fn(name)
        home = self.session_home()
        return lambda: os.chdir(home)

    def prepare_session_dirs(self, files: dict[str, str]) -> None:
        """Blocking: create the home (if ours) and token directory, write the initial files."""
        uid, gid = self.session_ids()
        # The root is shared by all users (hub-owned, traversable); below it all is the user's.
        os.makedirs(self.session_root, mode=0o755, exist_ok=True)
        if self.run_as_hub_user:
            ensure_token_dir(self.session_home(), uid=uid, gid=gid)
        token_dir = self.resolved_token_dir()
        ensure_token_dir(token_dir, uid=uid, gid=gid)
        write_token_files(token_dir, files, uid=uid, gid=gid)

    async def start(self):
        tokens = await self.load_session_tokens()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.prepare_session_dirs, token_files(tokens))
        server_cmd = list(self.cmd)
        # LocalProcessSpawner.start reads self.cmd synchronously: wrap it for that call only.
        self.cmd = [*self.session_wrapper, *server_cmd]
        try:
            return await super().start()
        finally:
            self.cmd = server_cmd

    async def stop(self, now: bool = False):
        await super().stop(now=now)
        token_dir = self.resolved_token_dir()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, shutil.rmtree, token_dir, True)
        self.log.info("Removed token files of %s from %s", self._log_name, token_dir)
