"""State that must survive a crash: files replaced atomically and durably.

A crash leaves either the old file or the new one, never a torn one: the data goes to a temporary
file in the same directory, is fsynced, renamed over the target, and the directory is fsynced so
the rename itself is on disk. Files are created 0600 (keys, identities and ownership live here).

A file that cannot be decoded is never silently replaced: ``set_aside`` renames it next to where
it was, so the owner can rebuild its state from what the mesh and the kernel still hold and a
human can look at what went wrong.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path


def write_atomically(path: Path, data: bytes | str, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` (str is written as UTF-8), creating its directory."""
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(temp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def set_aside(path: Path, *, now: float | None = None) -> Path:
    """Rename an unreadable ``path`` to ``<name>.corrupt-<UTC time>`` (never over an earlier
    one) and return the new path; the caller logs why and rebuilds."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    suffix = 1
    while aside.exists():
        suffix += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{suffix}")
    os.replace(path, aside)
    return aside
