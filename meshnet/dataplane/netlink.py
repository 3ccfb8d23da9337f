"""The one place that talks netlink (pyroute2): namespaces, links, addresses, qdiscs.

Everything else calls these small typed functions and gets plain dataclasses back, so pyroute2's
quirks stay here: `IPRoute(netns=...)` silently *creates* a missing namespace unless `flags=0`,
one IPRoute used from several threads opens a socket per thread, and netlink errors arrive as
bare errno codes. Calls are synchronous; trio code runs them with `trio.to_thread.run_sync`.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError as _PyrouteNetlinkError

from meshnet.errors import MeshnetError

NETNS_DIR = Path("/var/run/netns")
_TC_ROOT = 0xFFFFFFFF


class NetlinkError(MeshnetError):
    """The kernel refused a network change."""


class NamespaceExists(NetlinkError):
    pass


class NamespaceNotFound(NetlinkError):
    pass


class InterfaceNotFound(NetlinkError):
    pass


@dataclass(frozen=True)
class LinkInfo:
    name: str
    index: int
    kind: str
    mac: str
    mtu: int
    up: bool
    master: int | None
    addresses: tuple[str, ...]  # "ip/prefixlen"


# --- namespaces -------------------------------------------------------------------------------


def list_namespaces() -> list[str]:
    return sorted(netns.listnetns())


def namespace_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def create_namespace(name: str) -> None:
    """Create a named namespace (as `ip netns add` does), with its loopback up."""
    try:
        netns.create(name)
    except FileExistsError:
        raise NamespaceExists(f"network namespace {name} already exists") from None
    with namespace(name) as ns:
        ns.set_up("lo")


def remove_namespace(name: str) -> bool:
    """Remove a named namespace and so every link in it; False if it was not there."""
    if not namespace_exists(name):
        return False
    netns.remove(name)
    return True


def namespace_pids(name: str) -> list[int]:
    """Processes whose network namespace is `name` (what `ip netns pids` reports)."""
    try:
        target = os.stat(NETNS_DIR / name)
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry))
    return pids


@contextmanager
def namespace(name: str | None) -> Iterator[Namespace]:
    """Operations on one namespace (None: the caller's own) through one netlink socket."""
    if name is not None and not namespace_exists(name):
        raise NamespaceNotFound(f"network namespace {name} does not exist")
    try:
        ipr = IPRoute(netns=name, flags=0) if name is not None else IPRoute()
    except FileNotFoundError:
        raise NamespaceNotFound(f"network namespace {name} does not exist") from None
    try:
        yield Namespace(ipr, name)
    finally:
        ipr.close()


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


class Namespace:
    """Typed netlink operations inside one namespace."""

    def __init__(self, ipr: Any, name: str | None) -> None:
        self._ipr = ipr
        self.name = name

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _PyrouteNetlinkError as e:
            where = f" in {self.name}" if self.name else ""
            raise NetlinkError(f"{what}{where}: {os.strerror(e.code)}") from e

    def index(self, ifname: str) -> int:
        found = self._ipr.link_lookup(ifname=ifname)
        if not found:
            where = f" in {self.name}" if self.name else ""
            raise InterfaceNotFound(f"no interface {ifname}{where}")
        return int(found[0])

    def has_link(self, ifname: str) -> bool:
        return bool(self._ipr.link_lookup(ifname=ifname))

    def create_veth(
        self, ifname: str, peer_ifname: str, peer_namespace: str | None, mtu: int | None = None
    ) -> None:
        """A veth pair with one end here and the other directly in `peer_namespace`.

        Creating the peer end in its namespace at once means no temporary name ever appears in
        the root namespace, where parallel labs could collide.
        """
        peer: dict[str, Any] = {"ifname": peer_ifname}
        if peer_namespace is not None:
            peer["net_ns_fd"] = peer_namespace
        if mtu is not None:
            peer["mtu"] = mtu
        extra = {"mtu": mtu} if mtu is not None else {}
        self._call(
            f"create veth {ifname}",
            self._ipr.link,
            "add",
            ifname=ifname,
            kind="veth",
            peer=peer,
            **extra,
        )

    def create_bridge(self, ifname: str, mtu: int | None = None) -> None:
        extra = {"mtu": mtu} if mtu is not None else {}
        self._call(
            f"create bridge {ifname}", self._ipr.link, "add", ifname=ifname, kind="bridge", **extra
        )

    def delete_link(self, ifname: str) -> bool:
        """Delete a link; False if it was not there (deleting is idempotent)."""
        if not self.has_link(ifname):
            return False
        self._call(f"delete {ifname}", self._ipr.link, "del", index=self.index(ifname))
        return True

    def set_master(self, ifname: str, bridge: str) -> None:
        self._call(
            f"attach {ifname} to {bridge}",
            self._ipr.link,
            "set",
            index=self.index(ifname),
            master=self.index(bridge),
        )

    def set_mtu(self, ifname: str, mtu: int) -> None:
        self._call(f"set mtu of {ifname}", self._ipr.link, "set", index=self.index(ifname), mtu=mtu)

    def set_up(self, ifname: str) -> None:
        self.set_state(ifname, up=True)

    def set_state(self, ifname: str, *, up: bool) -> None:
        self._call(
            f"set {ifname} {'up' if up else 'down'}",
            self._ipr.link,
            "set",
            index=self.index(ifname),
            state="up" if up else "down",
        )

    def add_address(self, ifname: str, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        try:
            self._call(
                f"add {cidr} to {ifname}",
                self._ipr.addr,
                "add",
                index=self.index(ifname),
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
            )
        except NetlinkError as e:
            cause = e.__cause__
            if isinstance(cause, _PyrouteNetlinkError) and cause.code == errno.EEXIST:
                return  # already there: adding is idempotent
            raise

    def set_rate(self, ifname: str, bits_per_second: int | None) -> None:
        """Cap the link's egress rate with a token bucket (tbf), or remove the cap (None)."""
        index = self.index(ifname)
        if bits_per_second is None:
            qdiscs = self._call(f"read qdiscs of {ifname}", self._ipr.get_qdiscs, index=index)
            if any(q["parent"] == _TC_ROOT and _attr(q, "TCA_KIND") == "tbf" for q in qdiscs):
                self._call(
                    f"remove rate limit of {ifname}",
                    self._ipr.tc,
                    "del",
                    index=index,
                    parent=_TC_ROOT,
                )
            return
        # Burst: enough for a few full frames, and ~20 ms of traffic at high rates.
        burst = max(16 * 1024, bits_per_second // 8 // 50)
        self._call(
            f"rate limit {ifname}",
            self._ipr.tc,
            "replace",
            "tbf",
            index,
            rate=f"{bits_per_second}bit",
            burst=burst,
            latency="100ms",
        )

    def link(self, ifname: str) -> LinkInfo:
        index = self.index(ifname)
        (msg,) = self._call(f"read {ifname}", self._ipr.get_links, index)
        return self._link_info(msg)

    def links(self) -> list[LinkInfo]:
        return [self._link_info(m) for m in self._call("list links", self._ipr.get_links)]

    def _link_info(self, msg: Any) -> LinkInfo:
        index = int(msg["index"])
        linkinfo = _attr(msg, "IFLA_LINKINFO")
        kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None
        addresses = tuple(
            f"{_attr(a, 'IFA_ADDRESS')}/{a['prefixlen']}" for a in self._ipr.get_addr(index=index)
        )
        return LinkInfo(
            name=str(_attr(msg, "IFLA_IFNAME")),
            index=index,
            kind=str(kind or ""),
            mac=str(_attr(msg, "IFLA_ADDRESS") or ""),
            mtu=int(_attr(msg, "IFLA_MTU")),
            up=_attr(msg, "IFLA_OPERSTATE") != "DOWN" and bool(msg["flags"] & 1),
            master=_attr(msg, "IFLA_MASTER"),
            addresses=addresses,
        )
