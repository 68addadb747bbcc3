"""``python -m spawners.session``: the wrapper that runs the refresher beside the notebook server."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap

from tests.test_refresher import API_TOKEN, FakeIssuer, start_server, wait_for

# A stand-in for jupyterhub-singleuser: handles SIGTERM (as the hub stops servers) by exiting 7, to
# show the status is passed on; waits for the refresher's token file and only then reports its mode,
# so the report is also the sign that the handler is in place.
SERVER_SCRIPT = textwrap.dedent(
    """
    import os, signal, stat, sys, time
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))
    path = os.path.join(os.environ["CMSAF_TOKEN_DIR"], "condor.token")
    while not os.path.exists(path):
        time.sleep(0.05)
    print("mode", oct(stat.S_IMODE(os.stat(path).st_mode)), flush=True)
    while True:
        time.sleep(1)
    """
)


def session_env(port: int, token_dir) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CMSAF_SERVICE_URL=f"http://127.0.0.1:{port}/services/cmsaf/",
        CMSAF_TOKEN_DIR=str(token_dir),
        JUPYTERHUB_API_TOKEN=API_TOKEN,
    )
    return env


async def test_wrapper_runs_refresher_forwards_sigterm_and_keeps_exit_status(tmp_path):
    issuer = FakeIssuer(lifetime=600)
    server, port = start_server(issuer)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spawners.session", "--", sys.executable, "-c", SERVER_SCRIPT,
        env=session_env(port, tmp_path), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.decode().split() == ["mode", "0o600"]
        assert (tmp_path / "condor.token").read_text() == "condor-jwt-0\n"
        proc.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        server.stop()
    assert returncode == 7
    stderr = (await proc.stderr.read()).decode()
    assert "Passing SIGTERM on to the session command" in stderr
    assert "condor-jwt-0" not in stderr and API_TOKEN not in stderr


async def test_wrapper_without_refresher_settings_still_runs_the_command(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMSAF_", "JUPYTERHUB_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spawners.session", "--", sys.executable, "-c", "raise SystemExit(4)",
        env=env, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 4
    assert "Token refresher not started: token refresher needs CMSAF_SERVICE_URL" in stderr.decode()


async def test_command_dies_with_a_killed_wrapper(tmp_path):
    """SIGKILL on the wrapper (nothing to forward) still ends the command: no orphan servers."""
    pid_file = tmp_path / "child.pid"
    script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spawners.session", "--", sys.executable, "-c", script,
        env={k: v for k, v in os.environ.items() if not k.startswith("CMSAF_")},
        stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
    )
    await wait_for(lambda: pid_file.exists() and pid_file.read_text() != "")
    child = int(pid_file.read_text())
    proc.kill()
    await proc.wait()

    def child_gone() -> bool:
        try:
            with open(f"/proc/{child}/stat") as f:
                return f.read().split(") ", 1)[1].startswith("Z")  # reaped by init soon
        except FileNotFoundError:
            return True

    await wait_for(child_gone)


async def test_missing_command_is_reported_not_a_traceback():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spawners.session", "--", "/nonexistent/jupyterhub-singleuser",
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 127
    assert "Cannot run the session command '/nonexistent/jupyterhub-singleuser'" in stderr.decode()
    assert "Traceback" not in stderr.decode()
