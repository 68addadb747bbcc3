"""The data helper explains, before any read, why the session's token cannot read a path."""

from __future__ import annotations

import os
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from cmsaf_hub.data import (StorageAccessError, StorageTokenError, check_storage_token, facility_url, read_bytes,
                            storage_token_file, token_problem)

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def token(scope="storage.read:/", aud="https://wlcg.cern.ch/jwt/v1/any", exp_in=600) -> str:
    now = int(time.time())
    return jwt.encode({"iss": "https://iam.example/", "sub": "alice-sub", "aud": aud, "scope": scope,
                       "iat": now, "exp": now + exp_in}, KEY, algorithm="RS256")


def write(tmp_path, value, mode=0o600):
    f = tmp_path / "xrootd.token"
    f.write_text(value)
    os.chmod(f, mode)
    return f


@pytest.mark.parametrize("scope,path,expected", [
    ("storage.read:/", "/store/data/f.root", None),
    ("storage.read:/store", "/store/data/f.root", None),
    ("storage.read:/store/mc", "/store/mc", None),
    ("storage.read:/store/mc", "/store/mcx/f.root", "grants storage.read for /store/mc but not for /store/mcx/f.root"),
    ("storage.read:/store/mc storage.read:/store/user", "/store/data/f.root",
     "grants storage.read for /store/mc, /store/user but not"),
    ("compute.read storage.create:/store", "/store/data/f.root", "no storage.read scope"),
])
def test_scope_must_cover_the_path(scope, path, expected):
    problem = token_problem(token(scope=scope), path)
    if expected is None:
        assert problem is None
    else:
        assert expected in problem


def test_expired_and_wrong_audience_and_garbage_are_named():
    assert "expired" in token_problem(token(exp_in=-30), "/store/f")
    assert "audience ['https://other.example']" in token_problem(token(aud="https://other.example"), "/store/f")
    assert token_problem("not-a-jwt", "/store/f") == "the storage token file does not hold a JWT"


def test_token_file_rules(tmp_path, monkeypatch):
    monkeypatch.delenv("BEARER_TOKEN_FILE", raising=False)
    with pytest.raises(StorageTokenError, match="BEARER_TOKEN_FILE is not set"):
        storage_token_file()
    with pytest.raises(StorageTokenError, match="does not exist"):
        storage_token_file(tmp_path / "missing")
    loose = write(tmp_path, token(), mode=0o644)
    with pytest.raises(StorageTokenError, match="chmod 600"):
        storage_token_file(loose)
    good = write(tmp_path, token())
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(good))
    assert check_storage_token("/store/f.root") == good


def test_facility_url_prefers_the_cache_and_leaves_urls_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(write(tmp_path, token())))
    monkeypatch.setenv("CMSAF_XROOTD_ORIGIN", "roots://origin.example:1094")
    monkeypatch.delenv("CMSAF_XCACHE_URL", raising=False)
    assert facility_url("/store/f.root") == "roots://origin.example:1094//store/f.root"
    monkeypatch.setenv("CMSAF_XCACHE_URL", "roots://xcache.example:1094/")
    assert facility_url("/store/f.root") == "roots://xcache.example:1094//store/f.root"
    assert facility_url("davs://elsewhere.example//store/f.root") == "davs://elsewhere.example//store/f.root"
    with pytest.raises(ValueError, match="absolute storage path"):
        facility_url("store/f.root")


def test_facility_url_refuses_when_the_token_cannot_read(tmp_path, monkeypatch):
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(write(tmp_path, token(scope="storage.read:/store/mc"))))
    monkeypatch.setenv("CMSAF_XROOTD_ORIGIN", "roots://origin.example:1094")
    with pytest.raises(StorageTokenError, match="not for /store/data/f.root"):
        facility_url("/store/data/f.root")
    monkeypatch.delenv("CMSAF_XROOTD_ORIGIN")
    monkeypatch.delenv("CMSAF_XCACHE_URL", raising=False)
    with pytest.raises(StorageTokenError, match="names no storage server"):
        facility_url("/store/mc/f.root")


class _Status:
    def __init__(self, ok: bool = True, message: str = "") -> None:
        self.ok, self.message = ok, message


class _StatInfo:
    def __init__(self, size: int) -> None:
        self.size = size


def partial_file(content: bytes, *, per_read: int, reported_size: int | None = None):
    """An XRootD ``client.File`` whose server answers each read with at most ``per_read`` bytes (as
    servers may) and reports ``reported_size`` at stat (a file that shrank after it was opened)."""

    class PartialFile:
        reads: list[tuple[int, int]] = []

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def open(self, url, timeout=0):
            return _Status(), None

        def stat(self, timeout=0):
            return _Status(), _StatInfo(len(content) if reported_size is None else reported_size)

        def read(self, offset=0, size=0, timeout=0):
            PartialFile.reads.append((offset, size))
            return _Status(), content[offset:offset + min(size, per_read)]

    return PartialFile


@pytest.fixture
def storage_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(write(tmp_path, token())))
    monkeypatch.setenv("CMSAF_XROOTD_ORIGIN", "roots://origin.example:1094")
    monkeypatch.delenv("CMSAF_XCACHE_URL", raising=False)


def test_read_bytes_loops_over_partial_reads_to_the_reported_size(storage_env, monkeypatch):
    from XRootD import client

    content = bytes(range(256)) * 40  # 10240 bytes
    fake = partial_file(content, per_read=1000)
    monkeypatch.setattr(client, "File", fake)
    assert read_bytes("/store/f.root", chunk_size=4096) == content
    # eleven short answers, each next request starting where the last one ended
    assert [o for o, _ in fake.reads] == list(range(0, 10240, 1000))
    assert fake.reads[0] == (0, 4096) and fake.reads[-1] == (10000, 240)


def test_read_bytes_fails_loudly_when_the_file_ends_before_its_size(storage_env, monkeypatch):
    from XRootD import client

    content = b"x" * 5000
    monkeypatch.setattr(client, "File", partial_file(content, per_read=3000, reported_size=8000))
    with pytest.raises(StorageAccessError,
                       match=r"short read of roots://origin.example:1094//store/f.root: the file ended at byte 5000 of 8000"):
        read_bytes("/store/f.root")
    # positive control: the same server and content, with the true size
    monkeypatch.setattr(client, "File", partial_file(content, per_read=3000))
    assert read_bytes("/store/f.root") == content
