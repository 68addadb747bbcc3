"""XRootD reads with the user's own token: a session reads the origin, a Dask worker of a local-backend
cluster reads through the XCache, the cache serves repeat reads, and refusals are clear.

Real parts only: Debian's xrootd with the SciTokens plugin (origin + XCache), tokens from the dev IAM,
the XRootD Python client, `dask worker` processes started by the LocalBackend.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_asyncio
from distributed import Client

from cmsaf_hub.service.backends.base import ClusterSpec
from cmsaf_hub.service.backends.local import LocalBackend
from cmsaf_hub.service.cluster_tokens import ClusterTokenKeeper
from cmsaf_hub.service.crypto import generate_cluster_tls
from cmsaf_hub.data import StorageAccessError, StorageTokenError, read_bytes
from cmsaf_hub.service.probe import client_security
from devstack.xrootd import missing_prerequisites
from devstack.datasite import start_data_site
from devstack.oauth_client import issuer_signed, user_token

pytestmark = [
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(missing_prerequisites() is not None,
                       reason=f"no token-authorised XRootD here: {missing_prerequisites()}"),
]

ALICE_FILE = "/store/user/alice/sample.root"
OTHER_FILE = "/store/data/Run2024/other.root"


def root_file_bytes(tmp, entries: int = 1000) -> bytes:
    """A real ROOT file with a small TTree, written by uproot."""
    import numpy as np
    import uproot

    with uproot.recreate(tmp) as f:
        f["events"] = {"pt": np.linspace(0.0, 100.0, entries), "n": np.arange(entries, dtype=np.int32)}
    return tmp.read_bytes()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory):
    """The dev IAM, an origin with two sample files, and an XCache in front of it."""
    state = tmp_path_factory.mktemp("data-site")
    files = {p: root_file_bytes(state / f"sample{i}.root", 1000 + i) for i, p in enumerate((ALICE_FILE, OTHER_FILE))}
    site = await start_data_site(state, files)
    yield site
    await site.stop()


def read_in_session(env: dict[str, str], path: str, check_token: bool = True) -> subprocess.CompletedProcess:
    """Read ``path`` with cmsaf_hub.data in a fresh process, as a notebook in a session would."""
    code = ("import sys; from cmsaf_hub.data import read_bytes; "
            f"sys.stdout.buffer.write(read_bytes({path!r}, check_token={check_token!r}))")
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True,
                          timeout=60)


async def test_session_token_reads_from_the_origin(site):
    token = await user_token(site.iam, site.client, "alice", scope="storage.read:/store/user/alice")
    r = read_in_session(site.env(site.token_file("alice", token), cache=False), ALICE_FILE)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert r.stdout == site.files[ALICE_FILE]


def expired_token(site, scope: str) -> str:
    """alice's token as the IdP would have issued it ten minutes ago: expired a minute ago."""
    iam, now = site.iam, int(time.time())
    return issuer_signed(iam, {
        "iss": iam.issuer, "sub": iam.user("alice")["sub"], "aud": "https://wlcg.cern.ch/jwt/v1/any",
        "scope": scope, "iat": now - 600, "nbf": now - 600, "exp": now - 60,
        "jti": f"expired-{now}", "wlcg.ver": "1.0", "client_id": site.client.client_id,
    })


async def test_dask_worker_reads_through_the_cache_with_tokens_the_service_keeps_fresh(site, tmp_path):
    """Workers of a local-backend cluster get the owner's token as a file; once it expired, the
    service's token keeper pushes a fresh one through the scheduler and reads work again without a
    restart; the first read lands in the XCache, the second is served from the cache's disk."""
    env = site.env(None, cache=True)  # the backend points BEARER_TOKEN_FILE at the cluster's token dir
    stack = site.stack
    cached = stack.cache_root / OTHER_FILE.lstrip("/")
    assert not cached.exists()

    # one OS user here: the clusters run as the test's (the data-access path, not user isolation, is tested)
    backend = LocalBackend(state_dir=str(tmp_path / "clusters"), same_user=True)
    await backend.start()
    tls = generate_cluster_tls("data0001").as_dict()
    spec = ClusterSpec(id="data0001", owner="alice", options={"cores": 1, "memory": 1.0}, env=env, tls=tls,
                       tokens={"xrootd": expired_token(site, "storage.read:/store")})
    fresh = await user_token(site.iam, site.client, "alice", scope="storage.read:/store")

    async def alices_tokens(owner: str) -> dict[str, str]:
        assert owner == "alice"
        return {"xrootd": fresh}

    keeper = ClusterTokenKeeper(tokens_provider=alices_tokens)
    try:
        info = await backend.start_scheduler(spec)
        spec.backend_state = info.backend_state
        await backend.submit_workers(spec, 1)
        security = client_security(tls["cert"], tls["key"])
        async with Client(info.address, security=security, asynchronous=True, timeout=30) as dask:
            await dask.wait_for_workers(1, timeout=60)
            with pytest.raises(StorageTokenError, match="expired"):
                await dask.submit(read_bytes, OTHER_FILE, pure=False)

            assert keeper.due("data0001", time.time())
            assert await keeper.refresh("data0001", "alice", info.address, security)
            assert not keeper.due("data0001", time.time())
            first = await dask.submit(read_bytes, OTHER_FILE, pure=False)
            assert first == site.files[OTHER_FILE]
            # the cache now holds the file and its cache-info record
            assert cached.exists() and cached.with_name(cached.name + ".cinfo").exists()
            # with the origin gone, the second read can only have come from the cache's disk
            await stack.origin.stop()
            try:
                second = await dask.submit(read_bytes, OTHER_FILE, pure=False)
            finally:
                await stack.origin.start()
            assert second == first
        token_file = Path(backend.state_dir) / "data0001" / "run" / "tokens" / "xrootd.token"
        assert token_file.read_text() == fresh and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    finally:
        await backend.stop_cluster(spec)
        await backend.close()


async def test_token_without_scope_for_the_path_is_refused_clearly(site):
    token = await user_token(site.iam, site.client, "alice", scope="storage.read:/store/user/alice")
    env = site.env(site.token_file("alice-narrow", token), cache=False)
    os.environ.update(env)
    try:
        with pytest.raises(StorageTokenError, match=f"not for {OTHER_FILE}"):
            read_bytes(OTHER_FILE)
    finally:
        for k in env:
            os.environ.pop(k, None)
    # and the server itself refuses, with XRootD's permission error surfaced
    r = read_in_session(env, OTHER_FILE, check_token=False)
    assert r.returncode != 0
    assert b"StorageAccessError" in r.stderr and b"permission denied" in r.stderr.lower()


async def test_expired_token_is_refused_and_a_refreshed_one_works_without_restart(site):
    iam = site.iam
    expired = expired_token(site, "storage.read:/store")
    path = site.token_file("alice-rotating", expired)
    env = site.env(path, cache=False)

    checked = read_in_session(env, ALICE_FILE)
    assert checked.returncode != 0 and b"expired" in checked.stderr
    refused = read_in_session(env, ALICE_FILE, check_token=False)
    assert refused.returncode != 0 and b"StorageAccessError" in refused.stderr

    # the session's refresher replaces the file in place: the next read just works
    path.write_text(await user_token(iam, site.client, "alice", scope="storage.read:/store"))
    fresh = read_in_session(env, ALICE_FILE)
    assert fresh.returncode == 0, fresh.stderr.decode()[-2000:]
    assert fresh.stdout == site.files[ALICE_FILE]


async def test_the_cache_authorises_each_user_with_their_own_token(site):
    """The XCache reaches the origin with its own token, but never lends it to a user."""
    token = await user_token(site.iam, site.client, "alice", scope="storage.read:/store/user/alice")
    env = site.env(site.token_file("alice-cache-narrow", token), cache=True)
    r = await asyncio.to_thread(read_in_session, env, OTHER_FILE, False)
    assert r.returncode != 0
    assert b"StorageAccessError" in r.stderr and b"permission denied" in r.stderr.lower()


async def test_fsspec_and_uproot_read_the_facilitys_roots_urls_with_their_defaults(site):
    """``roots://`` (what facility_url hands out) resolves in fsspec through cmsaf-hub's entry point to
    a filesystem that keeps TLS; uproot.open reads it with default settings, through the XCache."""
    token = await user_token(site.iam, site.client, "alice", scope="storage.read:/store")
    env = site.env(site.token_file("alice-fsspec", token), cache=True)
    code = (
        "import sys, fsspec, uproot\n"
        "from cmsaf_hub.data import facility_url\n"
        f"url = facility_url({OTHER_FILE!r})\n"
        "fs, path = fsspec.core.url_to_fs(url)\n"
        "print(url.split(':')[0], type(fs).__name__, fs.unstrip_protocol(path).split(':')[0])\n"
        "with fsspec.open(url, 'rb') as f:\n"
        "    sys.stdout.buffer.write(f.read())\n"
        "print()\n"
        "print(sorted(uproot.open(url).keys()))\n"
    )
    r = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code], env={**os.environ, **env},
                                capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    first, rest = r.stdout.split(b"\n", 1)
    assert first.decode().split() == ["roots", "SecureXRootDFileSystem", "roots"]
    assert rest.startswith(site.files[OTHER_FILE])
    assert rest[len(site.files[OTHER_FILE]):].strip() == b"['events;1']"


async def test_read_bytes_reads_to_the_end_and_fails_loudly_on_a_file_cut_short_on_the_origin(site, monkeypatch):
    """Against the real origin: many partial reads make up the whole file; a file the origin cuts
    while it is read (truncated after the first read: the server then answers short, then nothing)
    raises with where it ended instead of returning a prefix."""
    from XRootD import client

    token = await user_token(site.iam, site.client, "alice", scope="storage.read:/store/user/alice")
    for name, value in site.env(site.token_file("alice-short-read", token), cache=False).items():
        monkeypatch.setenv(name, value)
    path, payload = "/store/user/alice/short-read.bin", os.urandom(1_000_003)
    stored = site.stack.store_path(path)
    stored.write_bytes(payload)
    real_read, answered = client.File.read, []

    def read(self, *args, **kwargs):
        status, data = real_read(self, *args, **kwargs)
        answered.append(len(data or b""))
        if cut_at is not None and len(answered) == 1:
            os.truncate(stored, cut_at)
        return status, data

    monkeypatch.setattr(client.File, "read", read)
    cut_at = None
    assert await asyncio.to_thread(read_bytes, path, chunk_size=65536) == payload
    assert answered == [65536] * 15 + [1_000_003 - 15 * 65536]

    answered.clear()
    cut_at = 100_000
    with pytest.raises(StorageAccessError, match=r"short read of roots?://\S+: the file ended at byte 100000 of 1000003"):
        await asyncio.to_thread(read_bytes, path, chunk_size=65536)
    assert answered == [65536, 100_000 - 65536, 0]  # the origin's own short answer, then its end
