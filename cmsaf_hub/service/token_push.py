"""Push fresh token files into a running Dask cluster, through its scheduler.

A cluster's jobs got their tokens as files when they started; those tokens expire long before a
cluster may end. The service's reconciler calls :func:`push_tokens` before expiry: it connects to the
scheduler like any client and writes ``<dir>/<name>.token`` (atomically, 0600) on the scheduler and on
every worker, where ``<dir>`` is each process's own ``$CMSAF_TOKEN_DIR`` (the job sandbox for
HTCondor jobs). Backend-agnostic: only Dask is involved. Token values travel inside the cluster's
TLS connection and are never logged or returned.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from distributed import Client
from distributed.security import Security

log = logging.getLogger(__name__)

_TOKEN_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class PushResult:
    """Which processes got which token files; failures carry a reason, never a token."""

    written: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and bool(self.written)


def token_writer() -> Callable[[dict[str, str], str], list[str]]:
    """The function run on the scheduler and workers.

    Built as a closure so that cloudpickle ships it by value: cluster images need not have cmsaf_hub.
    """

    def write_tokens(tokens: dict[str, str], target_dir_env: str) -> list[str]:
        import os

        directory = os.environ.get(target_dir_env)
        if not directory:
            raise RuntimeError(f"${target_dir_env} is not set in this process")
        written = []
        for name, value in sorted(tokens.items()):
            path = os.path.join(directory, f"{name}.token")
            tmp = f"{path}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(value)
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            written.append(path)
        return written

    return write_tokens


def _collect(result: PushResult, replies: dict[str, object]) -> None:
    for address, reply in replies.items():
        if isinstance(reply, BaseException):
            result.failed[address] = f"{type(reply).__name__}: {reply}"
        else:
            result.written[address] = list(reply)


async def push_tokens(
    scheduler_address: str,
    security: Security | None,
    tokens: dict[str, str],
    target_dir_env: str = "CMSAF_TOKEN_DIR",
    *,
    timeout: float = 30,
) -> PushResult:
    """Write ``tokens`` (``{name: jwt}``) as ``$target_dir_env/<name>.token`` on scheduler and workers.

    Processes that cannot write (no such variable, full disk...) are reported in ``failed``; the
    others still get their files. Connection errors raise ``OSError``/``TimeoutError``.
    """
    bad = [name for name in tokens if not _TOKEN_NAME.match(name)]
    if bad:
        raise ValueError(f"invalid token names: {', '.join(sorted(bad))}")
    result = PushResult()
    if not tokens:
        return result
    write = token_writer()
    async with Client(scheduler_address, security=security, asynchronous=True, timeout=timeout) as client:
        _collect(result, await client.run(write, dict(tokens), target_dir_env, on_error="return"))
        try:
            paths = await client.run_on_scheduler(write, dict(tokens), target_dir_env)
        except Exception as e:  # the scheduler's own failure, re-raised here by distributed
            result.failed["scheduler"] = f"{type(e).__name__}: {e}"
        else:
            result.written["scheduler"] = list(paths)
    log.info("Pushed %d token files to %d processes of %s (%d failed)",
             len(tokens), len(result.written), scheduler_address, len(result.failed))
    return result
