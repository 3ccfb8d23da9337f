"""The background router's log, ``STATE_DIR/meshnet.log``: size-capped and rotated.

A background launch hands its child the log file as stdout and stderr, so that whatever the
child prints before logging is set up (and the last ``meshnet: ...`` line of a failed start,
which the launching command reads back) lands there. The child then logs through a
``RotatingFileHandler`` on the same file; after each rotation it points its stdout and stderr at
the new file too, or they would keep writing into ``meshnet.log.1``.
"""

from __future__ import annotations

import logging
import os
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path

MAX_BYTES = 10 * 1024 * 1024  # per file; with the backups at most 60 MiB of logs in all
BACKUPS = 5  # meshnet.log.1 (the newest) .. meshnet.log.5
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class StateDirLog(RotatingFileHandler):
    """A rotating log whose rotations take the process's stdout and stderr along."""

    def __init__(
        self, path: Path, *, max_bytes: int = MAX_BYTES, follow_fds: tuple[int, ...] = ()
    ) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=BACKUPS, encoding="utf-8")
        self._follow_fds = follow_fds  # pointed at the new file after each rotation

    def doRollover(self) -> None:  # logging's name
        super().doRollover()
        if self.stream is not None and self._follow_fds:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd in self._follow_fds:
                os.dup2(self.stream.fileno(), fd)


def rotate_if_full(path: Path, *, max_bytes: int = MAX_BYTES) -> None:
    """Before a background start: a full log is rotated first, so that the child's output (and
    the parent's reading of it) starts in a file with room."""
    try:
        full = path.stat().st_size >= max_bytes
    except FileNotFoundError:
        return
    if full:
        handler = StateDirLog(path, max_bytes=max_bytes)
        handler.doRollover()
        handler.close()


def last_error(path: Path, start: int) -> str | None:
    """The last ``meshnet: ...`` line a background child wrote after offset ``start``: why it
    did not start (the launching command shows it instead of the whole log)."""
    with open(path, "rb") as f:
        f.seek(start)
        lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        if line.startswith("meshnet: "):
            return line.removeprefix("meshnet: ")
    return None


#: Libraries whose debug logs are every netlink message or HTTP frame: warnings only, or a
#: debug log would fill its 60 MiB in minutes with them.
QUIET = ("pyroute2", "httpx", "httpcore", "hpack")


def set_level(level: str) -> None:
    """The root logger's level by name (debug, info, warning, error)."""
    logging.getLogger().setLevel(level.upper())
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


def log_to_file(path: Path, level: str) -> None:
    """Send every log record to ``path`` (rotated) instead of stderr."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    handler = StateDirLog(path, follow_fds=(1, 2))  # our stdout and stderr: the same file
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    set_level(level)
