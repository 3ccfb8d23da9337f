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
import socket
import struct
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute, netns
from pyroute2 import config as _pyroute2_config
from pyroute2.netlink.exceptions import NetlinkError as _PyrouteNetlinkError
from pyroute2.netlink.rtnl import ndmsg
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD as _IFA_F_NODAD

from meshnet.errors import MeshnetError

NETNS_DIR = Path("/var/run/netns")
_TC_ROOT = 0xFFFFFFFF
_NSID_NOT_ASSIGNED = 0xFFFFFFFF
_MAIN_TABLE = 254
# Forwarding-database flags and states (linux/neighbour.h). On a bridge port, an entry without
# NTF_SELF goes to the bridge ("master"); NTF_SELF goes to the port device itself (VXLAN's own
# table of remote addresses). For the bridge, PERMANENT means "local: deliver to the host",
# NOARP alone means static.
_NTF_SELF = 0x02
_NTF_MASTER = 0x04
_NTF_STICKY = 0x40
_NUD_PERMANENT = ndmsg.states["permanent"]
_NUD_STATIC = ndmsg.states["noarp"] | ndmsg.states["reachable"]
_NUD_DYNAMIC = ndmsg.states["reachable"] | ndmsg.states["stale"]
# Neighbour notifications (linux/rtnetlink.h): a bridge's forwarding table is a neighbour table
# of family AF_BRIDGE; ARP and NDP entries come on the same group with AF_INET/AF_INET6.
_RTMGRP_LINK = 0x1
_RTMGRP_NEIGH = 0x4
_RTM_NEWLINK = 16
_RTM_DELLINK = 17
_RTM_NEWNEIGH = 28
_RTM_DELNEIGH = 29
_RTMGRP_IPV4_ROUTE = 0x40
_RTMGRP_IPV6_ROUTE = 0x400
_RTM_NEWROUTE = 24
_RTM_DELROUTE = 25
_RTMSG_TABLE = 4  # struct rtmsg: family, dst_len, src_len, tos, table, ...
_RT_TABLE_LOCAL = 255
_AF_BRIDGE = 7
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_NLM_F_REQUEST = 0x1
_NLMSG_ERROR = 2
_RTM_NEWNSID = 88
_RTM_GETNSID = 90
_NETNSA_NSID = 1  # linux/net_namespace.h
_NETNSA_FD = 3
_RTGENMSG = struct.Struct("=B3x")  # family, padded to 4 bytes
_NLATTR_U32 = struct.Struct("=HHI")  # length, type, value
_NDMSG_IFINDEX = struct.Struct("=i")  # in struct ndmsg, after family and padding (4 bytes)
_T = TypeVar("_T")

# `IPRoute(netns=...)` forks a helper from the calling (worker) thread, then stops it with
# SIGTERM once it has sent its socket. The child inherits the daemon's Python handler for
# SIGTERM: trio's, which takes the run loop's entry-queue lock. If another thread held that lock
# at the fork, the child waits for it forever and the parent in `waitpid` with it, holding the
# data plane's netlink limiter: every attach hangs (seen under load in the 60-container IPAM
# lab). pyroute2 resets SIGINT and SIGTERM to their defaults first thing in the child with this.
_pyroute2_config.disable_mp_signal = True


class NetlinkError(MeshnetError):
    """The kernel refused a network change."""


class NamespaceExists(NetlinkError):
    pass


class NamespaceNotFound(NetlinkError):
    pass


class InterfaceNotFound(NetlinkError):
    pass


class InterfaceExists(NetlinkError):
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
    # For a veth (or any link with a peer): the peer's ifindex, and the id under which this
    # namespace knows the peer's namespace (None: the peer is in this same namespace).
    peer_index: int | None = None
    peer_netnsid: int | None = None


@dataclass(frozen=True)
class RouteInfo:
    destination: str  # "net/prefixlen"
    ifindex: int | None
    gateway: str | None
    protocol: int  # 2: kernel (connected), 3: boot (`ip route add`), 4: static


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
    return namespaces_pids([name])


def namespaces_pids(names: Iterable[str]) -> list[int]:
    """Processes in any of the namespaces `names`: one walk of /proc for them all (a lab of 100
    hosts has 200 namespaces, and a walk per namespace would stat /proc 200 times over)."""
    targets = set()
    for name in names:
        try:
            st = os.stat(NETNS_DIR / name)
        except FileNotFoundError:
            continue
        targets.add((st.st_dev, st.st_ino))
    if not targets:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in targets:
            pids.append(int(entry))
    return pids


def namespace_path(name: str) -> Path:
    """The file behind a namespace given by name (under /var/run/netns) or absolute path."""
    return NETNS_DIR / name  # an absolute `name` replaces NETNS_DIR


def namespace_inode(name: str) -> tuple[int, int]:
    """(st_dev, st_ino) of a namespace file: equal for every file naming the same namespace."""
    try:
        st = os.stat(namespace_path(name))
    except OSError:
        raise NamespaceNotFound(f"network namespace {name} does not exist") from None
    return st.st_dev, st.st_ino


def is_namespace_file(path: str | Path) -> bool:
    """True if `path` is a live network namespace (an nsfs file, not a stale mount point)."""
    try:
        st = os.stat(path)
        own = os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return st.st_dev == own.st_dev


def run_in_namespace(name: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Call `fn(*args, **kwargs)` in a short-lived thread inside namespace `name` (or a path).

    setns(2) changes only the calling thread's namespace, so the rest of the process is never
    affected. Sockets and TAP devices opened by `fn` stay bound to that namespace after the thread
    ends, which is how a caller gets a socket inside a namespace without forking.
    """
    path = str(namespace_path(name))
    if not is_namespace_file(path):
        raise NamespaceNotFound(f"network namespace {name} does not exist")
    result: list[_T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            netns.setns(path, flags=0, fork=False)
            result.append(fn(*args, **kwargs))
        except BaseException as e:
            failure.append(e)

    thread = threading.Thread(target=body, name=f"in-netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


#: getsockopt(SOL_SOCKET, SO_NETNS_COOKIE): the cookie of the socket's namespace (Linux 5.14).
_SO_NETNS_COOKIE = 71


class NoNamespaceCookies(NetlinkError):
    """The kernel gives network namespaces no cookie (older than Linux 5.14)."""


def namespace_cookies(paths: Iterable[str]) -> dict[str, tuple[tuple[int, int], int]]:
    """The inode and the cookie of each path that names a live network namespace.

    A cookie is never given to another namespace while the machine runs; an inode number is, as
    soon as its namespace is gone (the kernel hands out the lowest free one). One short-lived
    thread enters each namespace in turn (setns changes only that thread) and asks a socket
    made there; both values come from one open file, so they belong to one namespace. Paths
    that are no namespace (or gone) are left out; NoNamespaceCookies on a kernel without them.
    """
    wanted = list(paths)
    found: dict[str, tuple[tuple[int, int], int]] = {}
    failure: list[BaseException] = []

    def visit() -> None:
        try:
            for path in wanted:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    st = os.fstat(fd)
                    netns.setns(fd, flags=0, fork=False)  # not a network namespace: EINVAL
                except OSError:
                    continue
                finally:
                    os.close(fd)
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                    try:
                        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_NETNS_COOKIE, 8)
                    except OSError as e:
                        raise NoNamespaceCookies(
                            "this kernel gives network namespaces no cookie (SO_NETNS_COOKIE, "
                            f"Linux 5.14): {e.strerror}"
                        ) from None
                found[path] = ((st.st_dev, st.st_ino), struct.unpack("=Q", raw)[0])
        except BaseException as e:
            failure.append(e)

    if wanted:
        thread = threading.Thread(target=visit, name="netns-cookies", daemon=True)
        thread.start()
        thread.join()
    if failure:
        raise failure[0]
    return found


def enter_namespace(name: str) -> None:
    """Move the calling thread into namespace `name` (or a path) for good: in a process of one
    thread, the process itself, as `nsenter --net` does before it runs a command."""
    path = str(namespace_path(name))
    if not is_namespace_file(path):
        raise NamespaceNotFound(f"network namespace {name} does not exist")
    netns.setns(path, flags=0, fork=False)


def refuse_router_advertisements(name: str, ifname: str) -> bool:
    """``accept_ra = 0`` on ``ifname`` in namespace ``name`` (a path too): a container takes no
    address, route or MTU from Router Advertisements another container might send. False if
    the namespace has no IPv6 (nothing to refuse)."""

    def write() -> bool:
        path = Path(f"/proc/sys/net/ipv6/conf/{ifname}/accept_ra")
        if not path.exists():
            return False
        path.write_text("0")
        return True

    return run_in_namespace(name, write)


def derive_link_local_from_mac(name: str, ifname: str) -> bool:
    """``addr_gen_mode = 0`` on ``ifname`` in namespace ``name``: its link-local address is the
    one derived from its MAC (EUI-64), the only one the bridge lets it use, even where the
    namespace's default is a stable-privacy or random one. False if the namespace has no IPv6."""

    def write() -> bool:
        path = Path(f"/proc/sys/net/ipv6/conf/{ifname}/addr_gen_mode")
        if not path.exists():
            return False
        if path.read_text().strip() != "0":
            path.write_text("0")
        return True

    return run_in_namespace(name, write)


def set_ipv4_forwarding(name: str, enabled: bool = True) -> None:
    """Make namespace `name` route IPv4 between its interfaces (or stop), as a router does.

    /proc/sys/net shows the namespace of the thread that opens it, so the write happens in a
    thread inside `name` (netlink has no sysctl message).
    """

    def write() -> None:
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1" if enabled else "0")

    run_in_namespace(name, write)


@contextmanager
def namespace(name: str | None) -> Iterator[Namespace]:
    """Operations on one namespace through one netlink socket.

    `name` is a name under /var/run/netns, an absolute path to a namespace file (such as
    /proc/PID/ns/net), or None for the caller's own namespace.
    """
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
        found = self._lookup(ifname)
        if found is None:
            where = f" in {self.name}" if self.name else ""
            raise InterfaceNotFound(f"no interface {ifname}{where}")
        return found

    def has_link(self, ifname: str) -> bool:
        return self._lookup(ifname) is not None

    def _lookup(self, ifname: str) -> int | None:
        """The index of `ifname`, or None. In the caller's own namespace an ioctl answers (the
        thread's namespace, as the netlink socket's): a router asks for an index before each
        forwarding-table change, and pyroute2 decoding a whole link message for it was a tenth
        of a busy router's CPU."""
        if self.name is None:
            try:
                return socket.if_nametoindex(ifname)
            except OSError:
                return None
        found = self._ipr.link_lookup(ifname=ifname)
        return int(found[0]) if found else None

    def create_veth_into(
        self,
        ifname: str,
        peer_ifname: str,
        *,
        peer_path: str | None = None,
        peer_pid: int | None = None,
        mtu: int | None = None,
        peer_mac: str | None = None,
        peer_gso_max_segs: int | None = None,
    ) -> None:
        """A veth pair: `ifname` here, `peer_ifname` created directly in another namespace.

        That namespace is a namespace file (`peer_path`: a name under /var/run/netns or an
        absolute path such as /proc/PID/ns/net) or a process (`peer_pid`); neither: here.
        `peer_gso_max_segs` caps the TCP segments per super-frame sent from the peer's side.
        """
        peer: dict[str, Any] = {"ifname": peer_ifname}
        fd = None
        if peer_path is not None:
            try:
                fd = os.open(namespace_path(peer_path), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                raise NamespaceNotFound(f"network namespace {peer_path} does not exist") from None
            peer["net_ns_fd"] = fd
        elif peer_pid is not None:
            peer["net_ns_pid"] = peer_pid
        if mtu is not None:
            peer["mtu"] = mtu
        if peer_mac is not None:
            peer["address"] = peer_mac
        if peer_gso_max_segs is not None:
            peer["gso_max_segs"] = peer_gso_max_segs
        extra = {"mtu": mtu} if mtu is not None else {}
        try:
            self._call(
                f"create veth {ifname}",
                self._ipr.link,
                "add",
                ifname=ifname,
                kind="veth",
                peer=peer,
                **extra,
            )
        except NetlinkError as e:
            cause = e.__cause__
            if isinstance(cause, _PyrouteNetlinkError) and cause.code == errno.EEXIST:
                raise InterfaceExists(f"interface {ifname} or {peer_ifname} already exists") from e
            raise
        finally:
            if fd is not None:
                os.close(fd)

    def set_mac(self, ifname: str, mac: str) -> None:
        self._call(
            f"set address of {ifname}", self._ipr.link, "set", index=self.index(ifname), address=mac
        )

    def link_by_index(self, index: int) -> LinkInfo | None:
        """The link with this ifindex, or None."""
        try:
            (msg,) = self._ipr.get_links(index)
        except _PyrouteNetlinkError:
            return None
        return self._link_info(msg)

    def bridge_ports(self, bridge: str) -> list[LinkInfo]:
        """Links enslaved to `bridge`."""
        master = self.index(bridge)
        ports = [
            m
            for m in self._call("list links", self._ipr.get_links)
            if _attr(m, "IFLA_MASTER") == master
        ]
        return self._link_infos(ports)

    def netnsid(self, name: str) -> int | None:
        """The id under which this namespace knows namespace `name` (name or path), if any.

        Ids are assigned by the kernel when a link's peer lives in the other namespace, so this is
        how a veth's IFLA_LINK_NETNSID is matched back to a namespace file.
        """
        try:
            fd = os.open(namespace_path(name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if self.name is None:
                nsid = _own_netnsid(fd)
            else:
                reply = self._ipr.get_netnsid(fd=fd)
                nsid = reply.get("nsid") if reply else None
        except _PyrouteNetlinkError:
            return None
        finally:
            os.close(fd)
        if nsid is None or nsid == _NSID_NOT_ASSIGNED or nsid < 0:
            return None
        return int(nsid)

    def delete_address(self, ifname: str, cidr: str) -> bool:
        """Remove an address; False if it was not there."""
        iface = ipaddress.ip_interface(cidr)
        index = self.index(ifname)
        present = {
            (str(_attr(a, "IFA_ADDRESS")), int(a["prefixlen"]))
            for a in self._ipr.get_addr(index=index)
        }
        if (str(iface.ip), iface.network.prefixlen) not in present:
            return False
        self._call(
            f"remove {cidr} from {ifname}",
            self._ipr.addr,
            "del",
            index=index,
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
        )
        return True

    def addresses(self) -> set[str]:
        """Every IP address on this namespace's links."""
        return {
            str(_attr(a, "IFA_ADDRESS"))
            for a in self._call("list addresses", self._ipr.get_addr)
            if _attr(a, "IFA_ADDRESS") is not None
        }

    def routes(self, ifname: str | None = None, *, family: int = 0) -> list[RouteInfo]:
        """Unicast routes of the main table (only those out of `ifname`, if given)."""
        kwargs: dict[str, Any] = {"table": _MAIN_TABLE}
        if family:
            kwargs["family"] = family
        if ifname is not None:
            kwargs["oif"] = self.index(ifname)
        found = []
        for r in self._call("list routes", self._ipr.get_routes, **kwargs):
            if r["type"] != 1:  # RTN_UNICAST
                continue
            dst = _attr(r, "RTA_DST")
            if dst is None:
                dst = "0.0.0.0" if r["family"] == 2 else "::"
            found.append(
                RouteInfo(
                    destination=f"{dst}/{r['dst_len']}",
                    ifindex=_attr(r, "RTA_OIF"),
                    gateway=_attr(r, "RTA_GATEWAY"),
                    protocol=int(r["proto"]),
                )
            )
        return found

    def add_route(self, destination: str, ifname: str, *, gateway: str | None = None) -> bool:
        """Route `destination` (a CIDR) out of `ifname`; False if that exact route exists."""
        net = ipaddress.ip_network(destination, strict=False)
        index = self.index(ifname)
        for route in self.routes(family=2 if net.version == 4 else 10):
            if ipaddress.ip_network(route.destination) == net and route.ifindex == index:
                return False
        extra: dict[str, Any] = {"gateway": gateway} if gateway else {}
        self._call(
            f"add route {net} via {ifname}",
            self._ipr.route,
            "add",
            dst=str(net),
            oif=index,
            table=_MAIN_TABLE,
            scope=0 if gateway else 253,  # universe via a gateway, else link
            **extra,
        )
        return True

    def replace_link_route(
        self, destination: str, ifname: str, *, source: str, metric: int | None = None
    ) -> None:
        """Make the on-link route to `destination` (a CIDR) out of `ifname` prefer `source`.

        It takes the place of the kernel's own route for that prefix (the same key: a replace,
        not a second route), which prefers the subnet's first (primary) address. An IPv6 route's
        key holds its metric: give the kernel's (256) to replace its route.
        """
        net = ipaddress.ip_network(destination, strict=False)
        extra: dict[str, Any] = {"priority": metric} if metric is not None else {}
        self._call(
            f"route {net} via {ifname} from {source}",
            self._ipr.route,
            "replace",
            dst=str(net),
            oif=self.index(ifname),
            table=_MAIN_TABLE,
            scope=253,  # link
            proto=2,  # kernel: as the route the kernel made for the address
            prefsrc=source,
            **extra,
        )

    def delete_route(self, destination: str, ifname: str) -> bool:
        """Remove the route to `destination` out of `ifname`; False if it was not there."""
        net = ipaddress.ip_network(destination, strict=False)
        index = self.index(ifname)
        for route in self.routes(family=2 if net.version == 4 else 10):
            if ipaddress.ip_network(route.destination) == net and route.ifindex == index:
                self._call(
                    f"remove route {net} via {ifname}",
                    self._ipr.route,
                    "del",
                    dst=str(net),
                    oif=index,
                    table=_MAIN_TABLE,
                )
                return True
        return False

    def create_veth(
        self, ifname: str, peer_ifname: str, peer_namespace: str | None, mtu: int | None = None
    ) -> None:
        """A veth pair with one end here and the other directly in `peer_namespace`.

        Creating the peer end in its namespace at once means no temporary name ever appears in
        the root namespace, where parallel labs could collide.
        """
        self.create_veth_into(ifname, peer_ifname, peer_path=peer_namespace, mtu=mtu)

    def create_bridge(self, ifname: str, mtu: int | None = None) -> None:
        extra = {"mtu": mtu} if mtu is not None else {}
        self._call(
            f"create bridge {ifname}", self._ipr.link, "add", ifname=ifname, kind="bridge", **extra
        )

    def create_vxlan(self, ifname: str, *, vni: int, port: int, mtu: int, version: int = 4) -> None:
        """A VXLAN device that learns nothing: every remote address comes from FDB entries.

        It sends from ``port`` too, not from a port hashed per inner flow: then every frame to a
        neighbour is one UDP flow, which a port-preserving NAT in front of either side maps
        once, both ways, and which the fastdp probes test as it is (with hashed ports the probes'
        flow passed a NAT while the containers' flows were dropped). ``version`` 6: a device of
        the IPv6 underlay (local ``::``: any of the host's addresses), whose FDB entries are
        IPv6 addresses only (a device works in one family)."""
        self._call(
            f"create vxlan {ifname}",
            self._ipr.link,
            "add",
            ifname=ifname,
            kind="vxlan",
            vxlan_id=vni,
            vxlan_port=port,
            vxlan_port_range={"low": port, "high": port + 1},
            vxlan_learning=0,
            mtu=mtu,
            **({"vxlan_local6": "::"} if version == 6 else {}),
        )

    def set_bridge_port(self, ifname: str, *, learning: bool, isolated: bool) -> None:
        """Isolated ports never forward to each other; without learning, only static entries."""
        self._call(
            f"set bridge port options of {ifname}",
            self._ipr.brport,
            "set",
            index=self.index(ifname),
            learning=int(learning),
            isolated=int(isolated),
        )

    def add_remote(self, ifname: str, mac: str, ip: str) -> None:
        """A VXLAN device sends frames for `mac` (all zeros: floods) to `ip`; idempotent."""
        self._fdb("append", ifname, mac, flags=_NTF_SELF, state=_NUD_PERMANENT, dst=ip)

    def delete_remote(self, ifname: str, mac: str, ip: str) -> None:
        self._fdb("del", ifname, mac, flags=_NTF_SELF, state=_NUD_PERMANENT, dst=ip)

    def pin_mac(self, port: str, mac: str) -> None:
        """The bridge sends frames for `mac` to `port`, and learning elsewhere cannot move it."""
        self._fdb("replace", port, mac, flags=_NTF_MASTER | _NTF_STICKY, state=_NUD_STATIC)

    def unpin_mac(self, port: str, mac: str) -> None:
        self._fdb("del", port, mac, flags=_NTF_MASTER, state=_NUD_STATIC)

    def add_local_mac(self, bridge: str, mac: str) -> None:
        """Frames for `mac` arriving on any port of `bridge` are delivered to the host."""
        self._fdb("replace", bridge, mac, flags=_NTF_SELF, state=_NUD_PERMANENT)

    def remove_local_mac(self, bridge: str, mac: str) -> None:
        self._fdb("del", bridge, mac, flags=_NTF_SELF, state=_NUD_PERMANENT)

    def learned_macs(self, bridge: str, *, exclude: set[str]) -> set[str]:
        """MACs behind the bridge's ports, except `exclude`: learned ones, and static ones (a
        container's, pinned to its port when attached); not the ports' own (permanent)."""
        master = self.index(bridge)
        skip = {self.index(name) for name in exclude if self.has_link(name)}
        found = set()
        for entry in self._call(f"read the forwarding table of {bridge}", self._ipr.fdb, "dump"):
            if (
                entry.get_attr("NDA_MASTER") == master
                and entry["ifindex"] not in skip
                and entry["state"] & (_NUD_DYNAMIC | ndmsg.states["noarp"])
                and not entry["state"] & _NUD_PERMANENT
            ):
                found.add(str(entry.get_attr("NDA_LLADDR")))
        return found

    def _fdb(self, command: str, ifname: str, mac: str, **kwargs: Any) -> None:
        try:
            self._call(
                f"{command} forwarding entry {mac} on {ifname}",
                self._ipr.fdb,
                command,
                ifindex=self.index(ifname),
                lladdr=mac,
                **kwargs,
            )
        except NetlinkError as e:
            cause = e.__cause__
            if isinstance(cause, _PyrouteNetlinkError) and (
                (command == "del" and cause.code == errno.ENOENT)
                or (command == "append" and cause.code == errno.EEXIST)
            ):
                return  # already as wanted
            raise

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

    def set_gso_max_segs(self, ifname: str, segments: int) -> None:
        """Cap the TCP segments per super-frame the stack sends through ``ifname``."""
        self._call(
            f"set gso_max_segs of {ifname}",
            self._ipr.link,
            "set",
            index=self.index(ifname),
            gso_max_segs=segments,
        )

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
        """Add an address; idempotent. IPv6 ones without duplicate address detection
        (IFA_F_NODAD): overlay addresses come from IPAM, unique by construction, and DAD would
        leave them "tentative" (unusable) for a second or more."""
        iface = ipaddress.ip_interface(cidr)
        extra: dict[str, Any] = {"flags": _IFA_F_NODAD} if iface.version == 6 else {}
        try:
            self._call(
                f"add {cidr} to {ifname}",
                self._ipr.addr,
                "add",
                index=self.index(ifname),
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
                **extra,
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
        return self._link_infos(list(self._call("list links", self._ipr.get_links)))

    def _link_infos(self, msgs: list[Any]) -> list[LinkInfo]:
        """Several links' infos from one dump of the addresses (one dump per link made a scan
        of a busy router's links quadratic in pyroute2's slow decoding)."""
        if not msgs:
            return []
        by_index: dict[int, list[str]] = {}
        for a in self._call("list addresses", self._ipr.get_addr):
            by_index.setdefault(int(a["index"]), []).append(_address_text(a))
        return [self._link_info(m, tuple(by_index.get(int(m["index"]), ()))) for m in msgs]

    def _link_info(self, msg: Any, addresses: tuple[str, ...] | None = None) -> LinkInfo:
        index = int(msg["index"])
        linkinfo = _attr(msg, "IFLA_LINKINFO")
        kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None
        if addresses is None:
            addresses = tuple(_address_text(a) for a in self._ipr.get_addr(index=index))
        return LinkInfo(
            name=str(_attr(msg, "IFLA_IFNAME")),
            index=index,
            kind=str(kind or ""),
            mac=str(_attr(msg, "IFLA_ADDRESS") or ""),
            mtu=int(_attr(msg, "IFLA_MTU")),
            up=_attr(msg, "IFLA_OPERSTATE") != "DOWN" and bool(msg["flags"] & 1),
            master=_attr(msg, "IFLA_MASTER"),
            addresses=addresses,
            peer_index=_attr(msg, "IFLA_LINK"),
            peer_netnsid=_attr(msg, "IFLA_LINK_NETNSID"),
        )


def _own_netnsid(fd: int) -> int | None:
    """The id under which the caller's namespace knows the namespace open as ``fd`` (None: it
    has none), asked with one hand-made RTM_GETNSID. Finding a container's namespace asks this
    of every namespace on the machine until one matches (hundreds in a large lab), and through
    pyroute2 each question cost a third of a millisecond of decoding."""
    body = _RTGENMSG.pack(socket.AF_UNSPEC) + _NLATTR_U32.pack(8, _NETNSA_FD, fd)
    request = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), _RTM_GETNSID, _NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC) as sock:
        sock.send(request + body)
        data = sock.recv(65536)
    for kind, offset in _message_kinds(data):
        if kind == _NLMSG_ERROR:
            return None
        if kind != _RTM_NEWNSID:
            continue
        length = _NLMSGHDR.unpack_from(data, offset - _NLMSGHDR.size)[0]
        end = offset - _NLMSGHDR.size + length
        at = offset + _RTGENMSG.size
        while at + 4 <= end:
            size, attribute = struct.unpack_from("=HH", data, at)
            if size < 4:
                break
            if attribute == _NETNSA_NSID and size >= 8:
                nsid: int = struct.unpack_from("=i", data, at + 4)[0]
                return nsid
            at += (size + 3) & ~3
    return None


def _address_text(msg: Any) -> str:
    return f"{_attr(msg, 'IFA_ADDRESS')}/{msg['prefixlen']}"


def _open_monitor(groups: int) -> socket.socket:
    """A non-blocking netlink socket subscribed to rtnetlink multicast ``groups`` in the
    caller's namespace. A full receive buffer fails a read with ENOBUFS: some notifications
    were lost, and the reader must look at the kernel's state again."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, 0)
    try:
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock


def open_fdb_monitor() -> socket.socket:
    """A socket told of every neighbour change in the caller's namespace.

    The kernel notifies when a bridge learns a MAC, sees it move, or ages it out (not when a
    known entry is merely refreshed by traffic), so reading this instead of dumping the table
    every second costs nothing while nothing changes. Pass what it receives to `fdb_changed`.
    """
    return _open_monitor(_RTMGRP_NEIGH)


def open_link_monitor() -> socket.socket:
    """A socket told of every link change in the caller's namespace: created, deleted, put on
    or taken off a bridge, moved to another namespace, up or down. Pass what it receives to
    `links_changed`."""
    return _open_monitor(_RTMGRP_LINK)


def open_route_monitor() -> socket.socket:
    """A socket told of every IPv4 and IPv6 route added or removed in the caller's namespace
    (an address or link coming up or going brings its routes along). Pass what it receives to
    `routes_changed`."""
    return _open_monitor(_RTMGRP_IPV4_ROUTE | _RTMGRP_IPV6_ROUTE)


def _message_kinds(data: bytes) -> Iterator[tuple[int, int]]:
    """Each netlink message's type and the offset of its body."""
    offset = 0
    while offset + _NLMSGHDR.size < len(data):
        length, kind = _NLMSGHDR.unpack_from(data, offset)[:2]
        if length < _NLMSGHDR.size:
            return
        yield kind, offset + _NLMSGHDR.size
        offset += (length + 3) & ~3


def links_changed(data: bytes) -> bool:
    """Whether a datagram of link notifications reports a link created, changed or deleted."""
    return any(kind in (_RTM_NEWLINK, _RTM_DELLINK) for kind, _ in _message_kinds(data))


def routes_changed(data: bytes) -> bool:
    """Whether a datagram of route notifications adds or removes a route that can lead
    elsewhere: the local table's (our own addresses, one per address and link) cannot."""
    return any(
        kind in (_RTM_NEWROUTE, _RTM_DELROUTE)
        and len(data) > body + _RTMSG_TABLE
        and data[body + _RTMSG_TABLE] != _RT_TABLE_LOCAL
        for kind, body in _message_kinds(data)
    )


def fdb_changed(data: bytes, ignored: Collection[int] = ()) -> bool:
    """Whether a datagram of neighbour notifications holds a bridge forwarding-table change on
    a port whose index is not ``ignored`` (ARP and NDP changes come on the same socket and are
    not)."""
    return any(
        kind in (_RTM_NEWNEIGH, _RTM_DELNEIGH)
        and len(data) >= body + 8
        and data[body] == _AF_BRIDGE
        and _NDMSG_IFINDEX.unpack_from(data, body + 4)[0] not in ignored
        for kind, body in _message_kinds(data)
    )
