"""Reading facility data with the user's own token: dataset path → XRootD URL, with a token check.

Design: the site cache is chosen by *URL rewriting* here rather than by the XRootD client's proxy
plugin. ``/store/...`` becomes ``roots://<xcache>//store/...`` when ``CMSAF_XCACHE_URL`` is set, else
``roots://<origin>//store/...``. The same two environment variables are set by the spawners in sessions
and by the cluster service in Dask workers, so a path means the same file everywhere, and an explicit URL
(``root://``, ``davs://``) is never rewritten. The XCache authorises each user with the user's token and
reaches the origin with its own, so on a WAN the first read of a file crosses it once and every later
read (by any worker of any user allowed to read it) is served from the site's disk.

The token check decodes claims *without* verifying them: it only explains to a person why a read would
fail. The servers verify every token themselves.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import jwt

WLCG_AUDIENCES = ("https://wlcg.cern.ch/jwt/v1/any",)
EXPLICIT_SCHEMES = ("root://", "roots://", "xroot://", "xroots://", "davs://", "https://", "http://")


class StorageTokenError(Exception):
    """The session's storage token cannot read the path; the message says why and what to do."""


class StorageAccessError(OSError):
    """The storage refused or failed a read; carries XRootD's own message."""


def _granted_prefixes(scope: str, verb: str = "storage.read") -> list[str]:
    return [s.split(":", 1)[1] or "/" for s in scope.split() if s.startswith(f"{verb}:")]


def _covers(prefix: str, path: str) -> bool:
    prefix = "/" + prefix.strip("/")
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def token_problem(token: str, path: str, *, now: float | None = None,
                  audiences: tuple[str, ...] = WLCG_AUDIENCES) -> str | None:
    """Why ``token`` cannot read ``path`` (a storage path such as ``/store/...``), or None if it looks fine."""
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return "the storage token file does not hold a JWT"
    now = time.time() if now is None else now
    exp = claims.get("exp")
    if isinstance(exp, (int, float)) and exp <= now:
        return (f"the storage token expired {int(now - exp)} s ago; the session's token refresher replaces it "
                "before expiry — if this persists, restart your server from the hub's home page")
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else list(aud or [])
    if audiences and not set(auds) & set(audiences):
        return f"the storage token is for audience {auds or '(none)'}, not the storage ({', '.join(audiences)})"
    prefixes = _granted_prefixes(str(claims.get("scope", "")))
    if not prefixes:
        return "the storage token has no storage.read scope"
    if not any(_covers(p, path) for p in prefixes):
        return f"the storage token grants storage.read for {', '.join(prefixes)} but not for {path}"
    return None


def storage_token_file(token_file: str | os.PathLike | None = None) -> Path:
    """The token file XRootD will use (WLCG bearer-token discovery: ``BEARER_TOKEN_FILE``)."""
    name = token_file or os.environ.get("BEARER_TOKEN_FILE")
    if not name:
        raise StorageTokenError("no storage token: BEARER_TOKEN_FILE is not set (are you inside a cmsaf-hub session?)")
    path = Path(name)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise StorageTokenError(f"no storage token: {path} does not exist") from None
    if stat.S_IMODE(mode) & 0o077:
        raise StorageTokenError(f"{path} is readable by others; XRootD refuses such token files (chmod 600 {path})")
    return path


def check_storage_token(path: str, token_file: str | os.PathLike | None = None) -> Path:
    """Raise StorageTokenError saying why the session's token cannot read ``path``; return the token file."""
    file = storage_token_file(token_file)
    problem = token_problem(file.read_text().strip(), path)
    if problem:
        raise StorageTokenError(problem)
    return file


def facility_url(path: str, *, check_token: bool = True, token_file: str | os.PathLike | None = None) -> str:
    """The XRootD URL that reads ``path`` at this facility, through the site cache when there is one.

    ``path`` is a storage path (``/store/user/alice/ntuple.root``); a full URL is returned unchanged.
    """
    if path.startswith(EXPLICIT_SCHEMES):
        return path
    if not path.startswith("/"):
        raise ValueError(f"{path!r} is neither a URL nor an absolute storage path like /store/...")
    server = os.environ.get("CMSAF_XCACHE_URL") or os.environ.get("CMSAF_XROOTD_ORIGIN")
    if not server:
        raise StorageTokenError(
            "this environment names no storage server: set CMSAF_XROOTD_ORIGIN (and CMSAF_XCACHE_URL for a site cache)"
        )
    if check_token:
        check_storage_token(path, token_file)
    return f"{server.rstrip('/')}/{path}"


#: Bytes asked for per read request: XRootD servers may answer any request with fewer bytes than asked.
READ_CHUNK = 64 * 1024 * 1024


def read_bytes(path: str, *, check_token: bool = True, timeout: int = 60, chunk_size: int = READ_CHUNK) -> bytes:
    """Read a whole file through XRootD with the ``BEARER_TOKEN_FILE`` token.

    Reads in ``chunk_size`` requests until the size the server reported at open is reached: a server
    may return fewer bytes than asked, so one read is never taken as the whole file. A refusal, or a
    file that ends before its reported size, becomes StorageAccessError; nothing is retried.
    """
    from XRootD import client  # the XRootD Python bindings (PyPI: xrootd)

    url = facility_url(path, check_token=check_token)
    with client.File() as f:
        status, _ = f.open(url, timeout=timeout)
        if not status.ok:
            raise StorageAccessError(f"cannot open {url}: {status.message.strip()}")
        status, info = f.stat(timeout=timeout)
        if not status.ok:
            raise StorageAccessError(f"cannot stat {url}: {status.message.strip()}")
        size, chunks, offset = info.size, [], 0
        while offset < size:
            status, data = f.read(offset=offset, size=min(chunk_size, size - offset), timeout=timeout)
            if not status.ok:
                raise StorageAccessError(f"cannot read {url} at byte {offset}: {status.message.strip()}")
            if not data:
                raise StorageAccessError(f"short read of {url}: the file ended at byte {offset} of {size}")
            chunks.append(data)
            offset += len(data)
        return b"".join(chunks)
