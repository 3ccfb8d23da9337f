"""Which network namespace is which: cookies the kernel never reuses, and every namespace in sight.

A namespace's inode number names it only while it lives: the next namespace gets it as soon as
it is gone. Its cookie (``netlink.namespace_cookies``) is never given twice while the machine
runs, so with the boot it belongs to (``boot_id``) it names one namespace for good. What can be
seen of the namespaces that exist now — a name under /var/run/netns, a bind mount (Docker's,
a CNI runtime's), a process inside — is what `visible_namespaces` reads; a namespace kept only
by an open file descriptor is not in sight.

All functions are synchronous; the daemon runs them in a worker thread.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from meshnet.dataplane.kernel import netlink
from meshnet.errors import UserError

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_MOUNTINFO = Path("/proc/self/mountinfo")
_PROC = Path("/proc")
_OCTAL = re.compile(r"\\([0-7]{3})")
#: Hex digits of the boot id kept: enough to tell this machine's boots apart.
BOOT_DIGITS = 12


@dataclass(frozen=True)
class VisibleNamespace:
    path: str  # one file naming it
    inode: tuple[int, int]  # (st_dev, st_ino): its name while it lives
    cookie: int  # its name for as long as the machine runs


def boot_id() -> str:
    """This boot's id (the start of the kernel's random boot id, hex): cookies are unique
    within one boot only."""
    return _BOOT_ID.read_text().strip().replace("-", "")[:BOOT_DIGITS]


def cookie_of(path: str) -> int:
    """The cookie of the namespace a file names; UserError if it names none (any more)."""
    try:
        found = netlink.namespace_cookies([path]).get(path)
    except netlink.NoNamespaceCookies as e:
        raise UserError(f"cannot tell network namespaces apart: {e}") from None
    if found is None:
        raise UserError(f"no such container namespace: {path}")
    return found[1]


def candidate_paths(*, mounts: bool = True) -> Iterator[str]:
    """Every file we can see that may name a network namespace: named ones, bind mounts of
    namespaces (where Docker and CNI runtimes keep theirs; not with ``mounts=False``), then one
    per process (lowest PID first: a container's init)."""
    try:
        named = sorted(os.listdir(netlink.NETNS_DIR))
    except OSError:
        named = []
    for name in named:
        yield str(netlink.NETNS_DIR / name)
    if mounts:
        yield from _namespace_mounts()
    try:
        entries = os.listdir(_PROC)
    except OSError:
        return
    for pid in sorted(int(e) for e in entries if e.isdigit()):
        yield f"/proc/{pid}/ns/net"


def _namespace_mounts() -> Iterator[str]:
    """Mount points of network namespace files in our mount namespace (mountinfo(5): the
    fourth field is the mounted root, ``net:[INODE]`` for one; the fifth the mount point,
    with spaces and the like escaped in octal)."""
    try:
        lines = _MOUNTINFO.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4 and fields[3].startswith("net:["):
            yield _OCTAL.sub(lambda m: chr(int(m[1], 8)), fields[4])


def visible_namespaces(extra: Iterable[str] = ()) -> list[VisibleNamespace]:
    """Every network namespace in sight (and those the ``extra`` paths name), once each."""
    by_inode: dict[tuple[int, int], str] = {}
    for path in [*extra, *candidate_paths()]:
        try:
            st = os.stat(path)
        except OSError:
            continue
        by_inode.setdefault((st.st_dev, st.st_ino), path)
    cookies = netlink.namespace_cookies(by_inode.values())
    return [VisibleNamespace(path, inode, cookie) for path, (inode, cookie) in cookies.items()]
