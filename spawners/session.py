"""``python -m spawners.session -- <command...>``: run a command with the token refresher beside it.

The local spawner wraps ``jupyterhub-singleuser`` in this so that the refresher lives exactly as
long as the notebook server: signals (SIGTERM/SIGINT/SIGHUP, how the hub stops servers) are passed
on to the command, the refresher stops when the command exits, and the exit status is the
command's. If this wrapper is killed outright, the kernel delivers SIGTERM to the command
(``PR_SET_PDEATHSIG``) so no orphan server outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import sys

from .refresher import RefresherConfig, TokenRefresher

log = logging.getLogger("cmsaf.session")

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1
#: Exit status when the command cannot be started at all (like a shell's "command not found").
COMMAND_NOT_RUNNABLE = 127


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when this wrapper dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def exit_status(returncode: int) -> int:
    """A shell-style exit status: ``128 + signal`` when the command died of a signal."""
    return 128 - returncode if returncode < 0 else returncode


async def run_session(command: list[str], config: RefresherConfig | None) -> int:
    """Run ``command`` with a refresher task beside it; return the command's exit status."""
    loop = asyncio.get_running_loop()
    # Handlers first: a stop signal that arrives while the command is being started is held and
    # passed on once it runs, instead of killing this wrapper and losing the command's status.
    process: asyncio.subprocess.Process | None = None
    held: list[int] = []

    def on_signal(signum: int) -> None:
        if process is None:
            held.append(signum)
        else:
            _forward(process, signum)

    for signum in FORWARDED_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    refresher = None
    try:
        try:
            process = await asyncio.create_subprocess_exec(*command, preexec_fn=_die_with_parent)
        except OSError as e:
            log.error("Cannot run the session command %r: %s", command[0], e.strerror or e)
            return COMMAND_NOT_RUNNABLE
        for signum in held:
            _forward(process, signum)
        refresher = asyncio.create_task(TokenRefresher(config).run()) if config else None
        returncode = await process.wait()
    finally:
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        for signum in FORWARDED_SIGNALS:
            loop.remove_signal_handler(signum)
    log.info("Session command exited with %s", returncode)
    return exit_status(returncode)


def _forward(process: asyncio.subprocess.Process, signum: int) -> None:
    log.info("Passing %s on to the session command", signal.Signals(signum).name)
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname).1s %(asctime)s %(name)s] %(message)s"
    )
    if not args:
        log.error("usage: python -m spawners.session -- <command> [args...]")
        return 2
    try:
        config: RefresherConfig | None = RefresherConfig.from_env()
    except ValueError as e:
        log.error("Token refresher not started: %s", e)
        config = None
    return asyncio.run(run_session(args, config))


if __name__ == "__main__":
    sys.exit(main())
