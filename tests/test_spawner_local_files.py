"""IAMLocalSpawner's file and environment preparation with a real system user (``nobody``)."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from spawners.local import IAMLocalSpawner
from spawners.tokens import token_files

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")

CONDOR_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJjb25kb3IifQ.Y29uZG9yLXNpZw"
AUTH_STATE = {
    "refresh_token": "REFRESH-TOKEN-never-in-a-session",
    "exchanged_tokens": {"condor": {"access_token": CONDOR_JWT, "expires_at": 1764000300.0}},
}


class HubUser:
    """The attributes of a JupyterHub User the spawner reads."""

    def __init__(self, name: str, auth_state: dict | None):
        self.name = name
        self.settings: dict = {}
        self._auth_state = auth_state

    async def get_auth_state(self):
        return self._auth_state


def make_spawner(tmp_path, name: str, **config) -> IAMLocalSpawner:
    return IAMLocalSpawner(
        user=HubUser(name, AUTH_STATE), session_root=str(tmp_path / "sessions"),
        service_url="http://127.0.0.1:8000/services/cmsaf/", **config,
    )


@pytest.fixture
def shared_tmp():
    """A directory other users may traverse (pytest's own tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="cmsaf-spawner-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


async def test_files_owned_by_the_system_user_and_0600(shared_tmp):
    nobody = pwd.getpwnam("nobody")
    spawner = make_spawner(shared_tmp, "nobody")
    files = token_files(await spawner.load_session_tokens())
    spawner.prepare_session_dirs(files)
    token_dir = shared_tmp / "sessions" / "nobody" / "default" / "tokens"
    # the session user can read its file through every directory on the way ...
    read = subprocess.run(
        ["/bin/cat", str(token_dir / "condor.token")], user=nobody.pw_uid, group=nobody.pw_gid,
        capture_output=True, text=True, timeout=30,
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout == CONDOR_JWT + "\n"
    # ... and the shared root stays the hub's
    assert (shared_tmp / "sessions").stat().st_uid == os.getuid()
    assert (shared_tmp / "sessions" / "nobody").stat().st_uid == nobody.pw_uid
    assert (token_dir.stat().st_uid, stat.S_IMODE(token_dir.stat().st_mode)) == (nobody.pw_uid, 0o700)
    info = (token_dir / "condor.token").stat()
    assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert (token_dir / "condor.token").read_text() == CONDOR_JWT + "\n"
    assert os.listdir(token_dir) == ["condor.token"]


async def test_env_and_command_for_a_system_user(tmp_path):
    spawner = make_spawner(tmp_path, "nobody")
    await spawner.load_session_tokens()
    env = spawner.user_env({})
    assert env["HOME"] == "/nonexistent" and env["USER"] == "nobody"
    assert spawner.session_wrapper == [sys.executable, "-m", "spawners.session", "--"]
    assert "--ServerApp.allow_root=True" not in spawner.get_args()


async def test_run_as_hub_user_uses_a_home_under_session_root(tmp_path):
    spawner = make_spawner(tmp_path, "alice", run_as_hub_user=True)
    files = token_files(await spawner.load_session_tokens())
    spawner.prepare_session_dirs(files)
    home = tmp_path / "sessions" / "alice" / "home"
    assert spawner.user_env({})["HOME"] == str(home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert (tmp_path / "sessions" / "alice" / "default" / "tokens" / "condor.token").stat().st_uid == 0
    assert "--ServerApp.allow_root=True" in spawner.get_args()
    assert spawner.session_ids() == (os.getuid(), os.getgid())
