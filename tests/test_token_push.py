"""push_tokens against a real TLS Dask scheduler and two worker processes with their own token dirs."""

from __future__ import annotations

import logging
import os
import stat

import pytest
from distributed import Nanny, Scheduler
from distributed.security import Security

from cmsaf_hub.service.token_push import push_tokens

pytestmark = pytest.mark.slow


@pytest.fixture
async def cluster(tmp_path, monkeypatch):
    """A TLS scheduler in this process (token dir via env) and two nanny-run workers, one dir each."""
    security = Security.temporary()
    sched_dir = tmp_path / "scheduler"
    sched_dir.mkdir()
    monkeypatch.setenv("CMSAF_TOKEN_DIR", str(sched_dir))
    dirs = [tmp_path / "w0", tmp_path / "w1"]
    for d in dirs:
        d.mkdir()
    async with Scheduler(protocol="tls", port=0, host="127.0.0.1", dashboard_address=":0", security=security) as s:
        nannies = [Nanny(s.address, security=security, name=f"w{i}", env={"CMSAF_TOKEN_DIR": str(d)})
                   for i, d in enumerate(dirs)]
        for n in nannies:
            await n
        assert len(s.workers) == 2  # a started nanny has registered its worker
        yield s, security, sched_dir, dirs
        for n in nannies:
            await n.close()


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_fresh_tokens_land_on_scheduler_and_every_worker(cluster, caplog):
    caplog.set_level(logging.DEBUG)
    scheduler, security, sched_dir, dirs = cluster
    first = {"condor": "eyJ.condor-one.sig", "xrootd": "eyJ.xrootd-one.sig"}
    result = await push_tokens(scheduler.address, security, first)
    assert result.ok and len(result.written) == 3 and "scheduler" in result.written
    second = {"condor": "eyJ.condor-two.sig", "xrootd": "eyJ.xrootd-two.sig"}
    result = await push_tokens(scheduler.address, security, second)
    assert result.ok
    for d in [sched_dir, *dirs]:
        assert sorted(os.listdir(d)) == ["condor.token", "xrootd.token"]  # replaced, no temp files left
        for name, value in second.items():
            assert (d / f"{name}.token").read_text() == value
            assert mode(d / f"{name}.token") == 0o600
    secrets = list(first.values()) + list(second.values())
    assert not [s for s in secrets if s in caplog.text or s in repr(result)]


async def test_processes_without_a_token_dir_are_reported_not_fatal(cluster):
    scheduler, security, sched_dir, dirs = cluster
    result = await push_tokens(scheduler.address, security, {"condor": "eyJ.x.sig"}, target_dir_env="NO_SUCH_DIR")
    assert not result.ok and result.written == {}
    assert set(result.failed) == {*scheduler.workers, "scheduler"}
    assert all("$NO_SUCH_DIR is not set" in reason for reason in result.failed.values())


async def test_token_names_cannot_escape_the_directory():
    with pytest.raises(ValueError, match="invalid token names: ../evil"):
        await push_tokens("tls://127.0.0.1:1", None, {"../evil": "x"})
