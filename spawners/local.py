"""``IAMLocalSpawner``: local-process sessions with token files and the refresher beside them.

The embedded default (used by the demo launcher). Before the notebook server starts, the user's
exchanged tokens are written as 0600 files owned by the session user into a per-server runtime
directory; the server command is wrapped in ``python -m spawners.session --`` so the token
refresher runs for exactly the server's life. The directory is removed when the server stops.

Two ways to map hub users to OS users:

- ``run_as_hub_user = False`` (the default, JupyterHub's usual way): a system user per hub user;
  sessions setuid to it and the files are chowned to it. The hub runs as root.
- ``run_as_hub_user = True`` (the demo when it cannot create OS users): sessions run as the hub's
  own OS user with ``HOME`` at ``<session_root>/<username>/home``. Users are then NOT isolated from
  each other nor from the hub (its database, the service's files): logged as a warning at each spawn.

The session's environment is JupyterHub's (``env_keep`` + the hub's variables for the session)
plus :func:`spawners.tokens.session_env`, with the session Python's ``bin`` first on ``PATH`` —
never the hub's own environment.
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


def session_path(env: dict[str, str], python: str) -> dict[str, str]:
    """``env`` with the session Python's ``bin`` first on ``PATH`` (pure)."""
    bin_dir = os.path.dirname(python)
    rest = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != bin_dir]
    return {**env, "PATH": os.pathsep.join([bin_dir, *rest])}


class IAMLocalSpawner(TokenDeliveryMixin, LocalProcessSpawner):
    """LocalProcessSpawner whose sessions hold fresh audience-scoped token files."""

    run_as_hub_user = Bool(
        False,
        help="""Run every session as the hub's own OS user instead of a system user named like
        the hub user, with ``HOME`` at ``<session_root>/<username>/home``. For demos and
        single-user development only: sessions are not isolated from each other.""",
    ).tag(config=True)

    python = Unicode(
        sys.executable,
        help="""Interpreter of the session environment (the one with cmsaf-hub, Jupyter and the
        analysis software); every user's OS account must be able to run it. It runs the refresher
        and, unless ``cmd`` is set, the notebook server; its ``bin`` directory leads ``PATH`` in the
        session, so ``python3`` and ``cmsaf-dask`` in a terminal are this environment's.""",
    ).tag(config=True)

    terminal_login_shell = Bool(
        False,
        help="""Start terminals with a login shell (Jupyter's default when the server has no
        terminal). A login shell reads /etc/profile, which resets ``PATH`` on Debian, so ``python3``
        there is the system's; off, terminals run the user's shell as an interactive non-login
        shell that keeps the session's ``PATH`` (``~/.bashrc`` still runs).""",
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
        # The session environment's own server, so sessions work without it on the hub's PATH.
        return [self.python, "-m", "jupyterhub.singleuser"]

    @default("session_wrapper")
    def _default_session_wrapper(self) -> list[str]:
        return [self.python, "-m", "spawners.session", "--"]

    @default("token_dir")
    def _default_token_dir(self) -> str:
        return os.path.join(self.session_root, "{username}", "{servername}", "tokens")

    def get_args(self) -> list[str]:
        args = super().get_args()
        if self.run_as_hub_user and os.getuid() == 0:
            # The demo's hub runs as root (a container); Jupyter refuses root unless told.
            args.append("--ServerApp.allow_root=True")
        if not self.terminal_login_shell:
            shell = self.user_env({})["SHELL"]
            args.append(f"--ServerApp.terminado_settings={{'shell_command': [{shell!r}]}}")
        return args

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        return session_path(env, self.python)

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
            env = super().user_env(env)
            env["SHELL"] = env.get("SHELL") or "/bin/sh"
            return env
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
        if self.run_as_hub_user:
            self.log.warning(
                "IAMLocalSpawner.run_as_hub_user is on: %s's session runs as the hub's OS user, NOT isolated from "
                "other users' sessions nor from the hub's files", self._log_name,
            )
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
