"""Writing token files: atomically (temp file + rename), mode 0600, owned by the session user.

Readers (HTCondor, XRootD's ztn client, the Dask client) open the file by name at any time, so a
file must never be seen half-written: each one is written to a temporary file in the same
directory and renamed over the old one. XRootD refuses token files readable by group or others,
hence 0600 from the first byte (the temporary file is created 0600 too).

These functions block (file I/O); async callers run them in an executor.
"""

from __future__ import annotations

import os
import tempfile
from typing import Mapping

TOKEN_FILE_MODE = 0o600
TOKEN_DIR_MODE = 0o700


def ensure_token_dir(path: str, uid: int | None = None, gid: int | None = None) -> None:
    """Create ``path`` as a 0700 directory owned by ``uid``/``gid`` when given.

    Missing parents are created the same way (0700, same owner), so the session user can always
    reach its directory; parents that exist already are left alone.
    """
    missing = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        os.makedirs(directory, mode=TOKEN_DIR_MODE, exist_ok=True)
        if uid is not None or gid is not None:
            os.chown(directory, -1 if uid is None else uid, -1 if gid is None else gid)
    os.chmod(path, TOKEN_DIR_MODE)
    if uid is not None or gid is not None:
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)


def write_file_atomically(
    path: str, content: str, uid: int | None = None, gid: int | None = None
) -> None:
    """Replace ``path`` with ``content`` in one rename; the file is 0600 throughout."""
    directory, name = os.path.split(path)
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(fd, TOKEN_FILE_MODE)
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            fd = -1
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if fd != -1:
            os.close(fd)
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise


def write_token_files(
    token_dir: str,
    files: Mapping[str, str],
    uid: int | None = None,
    gid: int | None = None,
) -> list[str]:
    """Write every changed file of ``files`` (``{filename: content}``); return the names written."""
    written = []
    for filename, content in sorted(files.items()):
        if os.sep in filename or filename.startswith("."):
            raise ValueError(f"refusing to write token file {filename!r} outside the token dir")
        path = os.path.join(token_dir, filename)
        if _current_content(path) == content:
            continue
        write_file_atomically(path, content, uid=uid, gid=gid)
        written.append(filename)
    return written


def _current_content(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
