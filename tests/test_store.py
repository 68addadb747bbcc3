"""Store: write-through persistence, reload, encryption at rest, change notification."""

import asyncio
import sqlite3
import time

import pytest

from cmsaf_hub.service.crypto import CryptError, SecretBox, generate_cluster_tls, new_crypt_key, parse_crypt_keys
from cmsaf_hub.service.models import ClusterRecord, ClusterStatus, ClusterTarget, WorkerRecord, WorkerStatus
from cmsaf_hub.service.store import Store


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'service.sqlite'}"


async def test_roundtrip_with_workers_and_encrypted_key(url, tmp_path):
    box = SecretBox(parse_crypt_keys(new_crypt_key()))
    tls = generate_cluster_tls("abc")
    store = Store(url)
    await store.open()
    record = ClusterRecord(id="abc", owner="alice", options={"workers": 2, "cores": 1}, created=time.time(),
                           worker_target=2, tls_cert=tls.cert, tls_key_encrypted=box.encrypt(tls.key),
                           backend_state={"address": "tls://127.0.0.1:1"})
    await store.add(record)
    await store.save_worker(WorkerRecord("abc", "w1", status=WorkerStatus.RUNNING, backend_state={"pid": 1}))
    await store.save_worker(WorkerRecord("abc", "w2"))
    record.status, record.target, record.reason = ClusterStatus.STOPPING, ClusterTarget.FAILED, "broken"
    await store.save(record)
    await store.delete_worker("abc", "w2")
    await store.close()

    raw = sqlite3.connect(tmp_path / "service.sqlite").execute("select tls_key_encrypted from clusters").fetchone()[0]
    assert b"PRIVATE KEY" not in raw and tls.key.encode() not in raw

    reloaded = Store(url)
    await reloaded.open()
    again = reloaded.get("abc")
    assert again.status is ClusterStatus.STOPPING and again.target is ClusterTarget.FAILED
    assert again.reason == "broken" and again.options == {"workers": 2, "cores": 1}
    assert again.backend_state == {"address": "tls://127.0.0.1:1"}
    assert list(again.workers) == ["w1"] and again.workers["w1"].status is WorkerStatus.RUNNING
    assert box.decrypt(again.tls_key_encrypted) == tls.key
    assert tls.key not in repr(again) and "PRIVATE" not in repr(tls)
    await reloaded.delete_cluster("abc")
    assert reloaded.get("abc") is None
    await reloaded.close()

    empty = Store(url)
    await empty.open()
    assert empty.clusters == {}
    await empty.close()


async def test_wait_for_change_wakes_on_save(url):
    store = Store(url)
    await store.open()
    record = ClusterRecord(id="x", owner="bob", options={}, created=time.time())
    await store.add(record)
    waiter = asyncio.create_task(store.wait_for_change("x", 10))
    await asyncio.sleep(0.05)
    record.status = ClusterStatus.RUNNING
    await store.save(record)
    assert await asyncio.wait_for(waiter, 5) is True
    assert await store.wait_for_change("x", 0.05) is False
    await store.close()


def test_key_rotation_and_wrong_key():
    old, new = new_crypt_key(), new_crypt_key()
    token = SecretBox(parse_crypt_keys(old)).encrypt("hunter2")
    assert SecretBox(parse_crypt_keys(f"{new};{old}")).decrypt(token) == "hunter2"
    with pytest.raises(CryptError, match="the encryption key changed") as err:
        SecretBox(parse_crypt_keys(new)).decrypt(token)
    assert "hunter2" not in str(err.value) and new not in str(err.value)
    with pytest.raises(ValueError):
        parse_crypt_keys("not-a-key")
    with pytest.raises(ValueError, match="no encryption key"):
        SecretBox([])
    assert new not in repr(SecretBox(parse_crypt_keys(new)))


def test_password_hidden_in_repr():
    assert "hunter2" not in repr(Store("postgresql://svc:hunter2@db.example/cmsaf"))


def postgres_tool(name: str) -> str:
    """A PostgreSQL server program: on PATH, or where Debian's ``postgresql`` package puts it."""
    import glob
    import shutil

    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        pytest.fail(f"PostgreSQL's {name} is missing: install Debian's postgresql package (.ci/run does)")
    return found


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on loopback (as the postgres user when the tests run as root)."""
    import os
    import shutil
    import socket
    import subprocess
    import tempfile
    from pathlib import Path

    initdb, pg_ctl = postgres_tool("initdb"), postgres_tool("pg_ctl")
    as_user = []
    # outside pytest's 0700 tree, so that the postgres user can reach it
    root = Path(tempfile.mkdtemp(prefix="cmsaf-pg-"))
    data = root / "pgdata"
    data.mkdir()
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root; Debian's package creates the postgres user
        as_user = ["runuser", "-u", "postgres", "--"]
        root.chmod(0o755)
        shutil.chown(data, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)  # noqa: E731
    run(initdb, "-D", str(data), "--auth=trust", "-U", "postgres")
    run(pg_ctl, "-D", str(data), "-w", "-o", f"-p {port} -k {data} -h 127.0.0.1", "-l", str(data / "log"), "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


async def test_postgresql_roundtrip(postgres_url):
    box = SecretBox(parse_crypt_keys(new_crypt_key()))
    store = Store(postgres_url)
    await store.open()
    record = ClusterRecord(id="pg1", owner="alice", options={"workers": 1}, created=time.time(),
                           tls_cert="cert", tls_key_encrypted=box.encrypt("key"), backend_state={"a": [1, 2]})
    await store.add(record)
    await store.save_worker(WorkerRecord("pg1", "w1", backend_state={"pid": 7}))
    record.status = ClusterStatus.RUNNING
    await store.save(record)
    await store.close()

    again = Store(postgres_url)
    await again.open()
    loaded = again.get("pg1")
    assert loaded.status is ClusterStatus.RUNNING and loaded.backend_state == {"a": [1, 2]}
    assert box.decrypt(loaded.tls_key_encrypted) == "key" and loaded.workers["w1"].backend_state == {"pid": 7}
    await again.close()
