"""IPAM's keys for containers attached by namespace, and which keys outlived their namespace.

A namespace's inode number is handed to the next namespace as soon as it is gone (the kernel
takes the lowest free one). Keys made of it (``netns:DEV:INO``, what routers wrote before
2026-12) let a new container inherit a dead one's addresses, and with them the families it was
attached with. The key is now the namespace's cookie, which the kernel never gives twice while
the machine runs, and the boot it belongs to: ``netns:COOKIE@BOOT``, with ``/IFNAME`` after it
for an interface other than ``ethwe`` (which gets addresses of its own).

``collect`` decides, without I/O, what happens to the keys IPAM holds given the namespaces the
kernel shows: a key whose namespace is provably gone is released, an old inode key whose
namespace still carries its addresses on our bridge is renamed to that namespace's cookie key,
and everything else is kept.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from meshnet.constants import CONTAINER_IFNAME

PREFIX = "netns:"
_BY_COOKIE = re.compile(r"netns:(?P<cookie>\d+)@(?P<boot>[0-9a-f]+)(?:/(?P<ifname>.+))?")
_BY_INODE = re.compile(r"netns:(?P<dev>\d+):(?P<ino>\d+)(?:/(?P<ifname>.+))?")


@dataclass(frozen=True)
class NamespaceId:
    """A network namespace for good: its cookie, unique within the boot it belongs to."""

    cookie: int
    boot: str


def owner_id(namespace: NamespaceId, ifname: str = CONTAINER_IFNAME) -> str:
    """IPAM's key for an interface of a namespace."""
    key = f"{PREFIX}{namespace.cookie}@{namespace.boot}"
    return key if ifname == CONTAINER_IFNAME else f"{key}/{ifname}"


@dataclass(frozen=True)
class ByCookie:
    namespace: NamespaceId
    ifname: str


@dataclass(frozen=True)
class ByInode:
    """A key from before cookies: names a namespace only while that one lives."""

    inode: tuple[int, int]
    ifname: str


def parse_owner(owner: str) -> ByCookie | ByInode | None:
    """What a namespace key names (None: it is no namespace's key)."""
    match = _BY_COOKIE.fullmatch(owner)
    if match is not None:
        namespace = NamespaceId(int(match["cookie"]), match["boot"])
        return ByCookie(namespace, match["ifname"] or CONTAINER_IFNAME)
    match = _BY_INODE.fullmatch(owner)
    if match is not None:
        inode = (int(match["dev"]), int(match["ino"]))
        return ByInode(inode, match["ifname"] or CONTAINER_IFNAME)
    return None


@dataclass(frozen=True)
class SeenNamespace:
    """A namespace that exists now, and its interfaces on our bridge with their addresses
    (CIDRs; read only when an inode key needs them)."""

    id: NamespaceId
    inode: tuple[int, int]
    attached: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Namespaces:
    """What the kernel shows: every namespace in sight, and this boot. ``unseen``: container
    ports on our bridge that lead to none of them: a namespace we cannot see is alive (held
    by an open file, say, or going away this moment), so while there are any no key counts as
    gone for not being seen."""

    seen: tuple[SeenNamespace, ...]
    boot: str
    unseen: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.unseen


@dataclass(frozen=True)
class Release:
    owner: str
    why: str


@dataclass(frozen=True)
class Rename:
    owner: str
    to: str


def collect(held: Mapping[str, Iterable[str]], namespaces: Namespaces) -> list[Release | Rename]:
    """What to do with the namespace keys IPAM holds (``held``: key → addresses): release
    those whose namespace is provably gone, rename inode keys to cookie keys where the
    namespace with that inode carries the key's addresses on that interface; keep the rest."""
    cookies = {ns.id for ns in namespaces.seen}
    by_inode = {ns.inode: ns for ns in namespaces.seen}
    actions: list[Release | Rename] = []
    for owner in sorted(held):
        parsed = parse_owner(owner)
        if isinstance(parsed, ByCookie):
            if parsed.namespace.boot != namespaces.boot:
                actions.append(Release(owner, "its namespace was of an earlier boot"))
            elif parsed.namespace not in cookies and namespaces.complete:
                actions.append(Release(owner, "its namespace is gone"))
        elif isinstance(parsed, ByInode):
            ns = by_inode.get(parsed.inode)
            if ns is not None and _carries(ns, parsed.ifname, held[owner]):
                actions.append(Rename(owner, owner_id(ns.id, parsed.ifname)))
            elif ns is not None:
                actions.append(Release(owner, "the namespace with its inode does not carry them"))
            elif namespaces.complete:
                actions.append(Release(owner, "its namespace is gone"))
    return actions


def _carries(ns: SeenNamespace, ifname: str, addresses: Iterable[str]) -> bool:
    """Whether any of ``addresses`` is on the namespace's interface ``ifname`` on our bridge:
    the namespace with an inode key's inode is that key's own, not a later one's."""
    on = {ipaddress.ip_interface(a).ip for a in ns.attached.get(ifname, ())}
    return any(ipaddress.ip_interface(a).ip in on for a in addresses)
