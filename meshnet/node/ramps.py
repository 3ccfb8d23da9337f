"""On and off ramps between the overlay and the host's world, and isolation between subnets.

**Expose** (``meshnet expose``) gives the host an address in a subnet of the overlay, on the
bridge, IPv4 or IPv6 alike: from IPAM (owner ``expose:<subnet>:<peer name>``, so ``meshnet reset``
hands it over with the peer's other addresses) unless given; the node's ``expose`` use case asks
IPAM and DNS, this service does the kernel's part. The subnet's on-link route then prefers that
address, so the host's own traffic to the subnet comes from it (the DNS server's address may
share the subnet: it is left to DNS). The DNS firewall lets the bridge reach the address, and
only containers of its subnet may (``inet meshnet``). Every local container with an address in
the subnet and no default route (of that family) gets one via the exposed address — at
``expose`` for those attached already, at ``attach`` for later ones — so it reaches the world
through its host (IP forwarding of that family is switched on), masqueraded to the host's
address on the way out unless exposed ``--without-masquerade``. ``hide`` undoes all of it (a
default route is removed only if it still points at the hidden address). What is exposed is
kept in the state directory and exposed again when the router starts; ``stop`` takes the
addresses off the bridge and removes the tables.

**Isolation** is on whenever the router runs: ``bridge meshnet`` (see ``nftables``) allows each
container port only the addresses meshnet attached to it, and only its own subnets. It fails
closed: the router does not start without it (unless launched ``--no-isolation``), an attach
whose rules cannot be installed fails (and is undone), and a bridge port that is neither a known
container's nor the router's own is shut by the table itself, whatever the records say. What each
port was given is recorded here, from the node's attach and detach (never from what the
container shows: an address added by hand inside it is exactly what must not count), and kept in
the state directory. A port found on the bridge without a record (attached while the router was
down, or by another tool) is adopted with the addresses it has, once; one whose container cannot
be found stays shut. A table update that fails in the background (after such a scan) is retried
at the next one: until then the table keeps what it had, and a new port stays shut. The host's
DNS server address is the one address every container may reach whatever its subnet; a
container none of whose subnets holds it gets a route to it (at attach, and when the server
starts).

The kernel work runs in worker threads; one lock orders the changes. What is recorded, and the
tables that asks for, are computed without I/O in ``ramps_state``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from collections.abc import Callable
from ipaddress import IPv6Network
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from meshnet.config import Config
from meshnet.constants import BRIDGE
from meshnet.dataplane.kernel import attach as attachment
from meshnet.dataplane.kernel import netlink, nftables
from meshnet.errors import MeshnetError, UserError
from meshnet.gossip.identity import format_peer_name
from meshnet.gossip.router import Router
from meshnet.node.ramps_state import (
    Exposed,
    Interface,
    IPAddress,
    Network,
    PortRecord,
    RampsState,
    gateways_for,
    needs_route_to,
)
from meshnet.node.specs import parse_exposure
from meshnet.statefile import set_aside, write_atomically

if TYPE_CHECKING:
    from meshnet.dataplane.service import DataPlane
    from meshnet.dns.service import DnsService
    from meshnet.ipam.service import IpamService

log = logging.getLogger("meshnet.ramps")

STATE_FILE = "ramps.json"
#: How often the bridge's ports are compared with the records (ports that came or went) when
#: the kernel reports no link change, and a failed isolation update is retried. With link
#: notifications (whose loss the kernel reports: ENOBUFS wakes a scan) only every RESCAN_TICK,
#: a safety net that costs an idle router nothing it would notice.
TICK = 30.0
RESCAN_TICK = 300.0
#: After another tool says it adds a port (``adopt_soon``): compare this often, for this long,
#: so that its container is isolated (and finds DNS) within moments, not at the next tick.
EAGER_TICK = 0.2
EAGER_FOR = 3.0
#: How long a port another tool announced with its addresses may take to show them all (Docker
#: configures them after its plugin's join) before it is adopted with what it shows.
ANNOUNCED_FOR = 30.0
_PROC_SYS = Path("/proc/sys/net/ipv4")
_PROC_SYS6 = Path("/proc/sys/net/ipv6/conf")
#: The kernel's metric for the on-link route of an IPv6 address (a replace must name it).
_IPV6_PREFIX_METRIC = 256

# --- kernel helpers (run in worker threads) -----------------------------------------------------


def _sysctl(path: Path, value: str) -> bool:
    """Write a sysctl of our namespace if it differs; True if it was changed."""
    if path.read_text().strip() == value:
        return False
    path.write_text(value)
    return True


def _add_to_bridge(address: Interface) -> bool:
    """Put the address on the bridge and make its subnet's route prefer it; True if IP
    forwarding (of its family) had to be switched on."""
    if address.version == 4:
        # Removing a subnet's first (primary) address would take the others with it (the DNS
        # server's, say) unless the kernel promotes the next one. (IPv6 has no primaries.)
        _sysctl(_PROC_SYS / "conf" / BRIDGE / "promote_secondaries", "1")
    metric = None if address.version == 4 else _IPV6_PREFIX_METRIC
    with netlink.namespace(None) as ns:
        ns.add_address(BRIDGE, str(address))
        ns.replace_link_route(str(address.network), BRIDGE, source=str(address.ip), metric=metric)
    if address.version == 4:
        return _sysctl(_PROC_SYS / "ip_forward", "1")
    return _sysctl(_PROC_SYS6 / "all" / "forwarding", "1")


def _taking_router_advertisements() -> list[str]:
    """Interfaces that stop learning routes from router advertisements now that IPv6
    forwarding is on (``accept_ra`` 1 means: only while not forwarding)."""
    found = []
    for conf in sorted(_PROC_SYS6.iterdir()):
        if conf.name in ("all", "default", "lo", BRIDGE):
            continue
        with contextlib.suppress(OSError):
            if (conf / "accept_ra").read_text().strip() == "1":
                found.append(conf.name)
    return found


def _remove_from_bridge(address: Interface) -> None:
    try:
        with netlink.namespace(None) as ns:
            ns.delete_address(BRIDGE, str(address))
            # IPv4: the kernel drops every route that preferred the address: the subnet's route
            # goes back to an address still in the subnet (the DNS server's), if there is one.
            # IPv6: the kernel keeps the route while an address of the prefix is left, and only
            # forgets its preferred source.
            if address.version == 6:
                return
            rest = [
                ipaddress.ip_interface(a)
                for a in ns.link(BRIDGE).addresses
                if ipaddress.ip_interface(a).network == address.network
            ]
            routed = any(
                ipaddress.ip_network(r.destination) == address.network
                for r in ns.routes(BRIDGE, family=2)
            )
            if rest and not routed:
                ns.replace_link_route(str(address.network), BRIDGE, source=str(rest[0].ip))
    except netlink.NetlinkError as e:  # the bridge (or the address) is gone already
        log.debug("could not remove %s from %s: %s", address, BRIDGE, e)


_DEFAULT = {4: "0.0.0.0/0", 6: "::/0"}


def _has_default_route(ns: netlink.Namespace, version: int) -> IPAddress | bool:
    """The gateway of the container's default route of that family, True if it has one
    without, False if it has none."""
    for route in ns.routes(family=2 if version == 4 else 10):
        if route.destination == _DEFAULT[version]:
            return ipaddress.ip_address(route.gateway) if route.gateway else True
    return False


def _set_default_route(record: PortRecord, gateway: IPAddress) -> bool:
    """A default route (of the gateway's family) via the gateway, unless the container has
    one; True if added."""
    try:
        with netlink.namespace(record.namespace) as ns:
            if _has_default_route(ns, gateway.version) is not False:
                return False
            return ns.add_route(_DEFAULT[gateway.version], record.ifname, gateway=str(gateway))
    except netlink.NetlinkError as e:
        log.info("no default route for %s via %s: %s", record.namespace, gateway, e)
        return False


def _clear_default_route(record: PortRecord, gateway: IPAddress) -> None:
    """Remove the container's default route if it goes via the gateway (ours)."""
    try:
        with netlink.namespace(record.namespace) as ns:
            if _has_default_route(ns, gateway.version) == gateway:
                ns.delete_route(_DEFAULT[gateway.version], record.ifname)
    except netlink.NetlinkError as e:
        log.debug("default route of %s left: %s", record.namespace, e)


def _set_host_route(record: PortRecord, address: IPAddress) -> None:
    """An on-link route from the container to the host's address (the DNS server's)."""
    try:
        with netlink.namespace(record.namespace) as ns:
            ns.add_route(str(ipaddress.ip_network(address)), record.ifname)
    except netlink.NetlinkError as e:
        log.info("no route for %s to %s: %s", record.namespace, address, e)


def _scan_bridge(
    known: set[str], unresolved: set[str]
) -> tuple[set[str], list[attachment.Attachment] | None] | None:
    """The bridge's container ports, and (only when some are new to us) every attachment the
    kernel shows, to adopt them from; None if the bridge cannot be read."""
    try:
        present = _container_ports()
    except netlink.NetlinkError as e:
        log.debug("cannot list the ports of %s: %s", BRIDGE, e)
        return None
    unknown = present - known
    if not unknown or unknown == unresolved:
        return present, None
    try:
        return present, attachment.list_attachments(bridge=BRIDGE)
    except (UserError, netlink.NetlinkError) as e:
        log.debug("cannot list the containers on %s: %s", BRIDGE, e)
        return present, None


def _container_ports() -> set[str]:
    """The bridge's veth ports whose other end is in another namespace: the containers'."""
    with netlink.namespace(None) as ns:
        if not ns.has_link(BRIDGE):
            return set()
        return {
            p.name
            for p in ns.bridge_ports(BRIDGE)
            if p.kind == "veth" and p.peer_netnsid is not None
        }


# --- the service --------------------------------------------------------------------------------


class Ramps:
    """Expose/hide and isolation for the daemon. Construct (loads the state), then ``serve``."""

    def __init__(
        self,
        config: Config,
        router: Router,
        dns: DnsService | None = None,
        ipam: IpamService | None = None,
    ) -> None:
        self.range = config.ipalloc_range
        self.default_subnet = config.ipalloc_default_subnet or config.ipalloc_range
        self.ipam = ipam  # the IPv6 ring's range and default subnet, once it has one
        self.no_masq_local = config.no_masq_local
        self.dns = dns
        self.peer = format_peer_name(router.identity.name)
        self._nick = router.identity.nickname
        self._path = config.state_dir / STATE_FILE
        #: The state file was unreadable: the node rebuilds what was exposed from IPAM and DNS
        #: (ports are adopted from the bridge as always).
        self.rebuilding = False
        self.state = self._load()
        self._saved = self.state.encode()
        self._forgotten = False
        self._lock = trio.Lock()
        self._dataplane: DataPlane | None = None
        self._following = False  # between start and stop: attaches and detaches are recorded
        self._inet_installed = False
        self._unresolved: set[str] = set()  # ports we could not adopt: not retried until new ones
        #: Ports another tool announced, with the addresses it gave them and until when to wait
        #: for the container to show them (Docker configures them after the plugin's join).
        self._announced: dict[str, tuple[frozenset[Interface], float]] = {}
        self._dns: tuple[IPAddress, ...] = ()  # where the DNS server listens, while it does
        #: Told when container ports left the bridge (their namespaces may be gone: the node
        #: gives their addresses back).
        self.ports_left_listeners: list[Callable[[], None]] = []
        self._wake = trio.Event()
        self._notified = False  # link notifications arrive (_watch_links): scans may be rare
        self._eager_until = 0.0
        self.isolation = "off (no data plane)"
        self.required = config.isolation  # False: --no-isolation
        self._stale = False  # the table lags the records: a background update failed
        self.forwarding_enabled = False

    # --- lifecycle

    async def serve(
        self, dataplane: DataPlane, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._dataplane = dataplane
        try:
            async with self._lock:
                await self._start()
            self._following = True
            if self.dns is not None:
                self.dns.listen_listeners.append(self._dns_moved)
                await self._dns_moved(self.dns.listen)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow_bridge)
                nursery.start_soon(self._watch_links)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self._stop(dataplane)

    async def _start(self) -> None:
        """Install the tables, or refuse to run (UserError, one line) unless --no-isolation."""
        await self._reconcile_ports()
        if not self.required:
            self.isolation = "off (--no-isolation)"
            log.warning(
                "%s: --no-isolation: containers are neither kept to their subnets nor to their "
                "own addresses (any of them may reach, and spoof, every subnet)",
                self._nick,
            )
            try:  # a table an earlier run left would keep every new port shut
                await trio.to_thread.run_sync(nftables.apply, nftables.removal())
            except UserError as e:
                log.debug("no nftables tables removed: %s", e)
            return
        try:
            await self._apply(fresh=True)
        except UserError as e:
            raise UserError(
                f"cannot isolate containers: {e} (launch with --no-isolation to run without it)"
            ) from None
        self.isolation = "on"
        if self.state.exposed:
            try:
                await self._open_dns()
            except UserError as e:
                log.error("%s: DNS firewall not opened for the host: %s", self._nick, e)
            for exposed in list(self.state.exposed.values()):
                try:
                    await self._put_on_bridge(exposed.address)
                except UserError as e:
                    log.error("%s: %s", self._nick, e)
                    continue
                log.info("%s: exposed %s again", self._nick, exposed.address)

    async def _stop(self, dataplane: DataPlane) -> None:
        self._following = False
        if self.dns is not None and self._dns_moved in self.dns.listen_listeners:
            self.dns.listen_listeners.remove(self._dns_moved)
        running, self.isolation = self.isolation, "off (stopped)"
        async with self._lock:
            for exposed in self.state.exposed.values():
                await trio.to_thread.run_sync(_remove_from_bridge, exposed.address)
            if running == "on":
                try:
                    await trio.to_thread.run_sync(nftables.apply, nftables.removal())
                except UserError as e:
                    log.error("%s: nftables tables left in place: %s", self._nick, e)
        self._inet_installed = False

    def require_running(self) -> None:
        """UserError unless expose and hide can work now."""
        if self._dataplane is None:
            raise UserError("this router runs without a data plane (--no-dataplane)")
        if self.isolation != "on":
            raise UserError(f"the ramps are not running: isolation {self.isolation}")

    async def _apply(self, *, fresh: bool = False) -> None:
        """Make both tables what the state says (the caller holds the lock)."""
        script = self.state.script(
            self.range,
            allocation_range6=self.range6,
            no_masq_local=self.no_masq_local,
            fresh_bridge=fresh,
            inet_installed=self._inet_installed and not fresh,
            dns=self._dns,
            own=self._dataplane.own_ports if self._dataplane is not None else (),
        )
        await trio.to_thread.run_sync(nftables.apply, script)
        self._inet_installed = bool(self.state.exposed)
        self._stale = False

    async def _open_dns(self) -> None:
        if self.dns is not None:
            await self.dns.open_addresses([str(e.address.ip) for e in self.state.exposed.values()])

    @property
    def range6(self) -> IPv6Network | None:
        """The IPv6 ring's range (None: IPv6 off, or no ring yet)."""
        allocator6 = self.ipam.allocator6 if self.ipam is not None else None
        if allocator6 is None:
            return None
        network = allocator6.config.range
        assert isinstance(network, IPv6Network)
        return network

    @property
    def default_subnet6(self) -> IPv6Network | None:
        """The default IPv6 subnet (None: IPv6 off, or no ring yet)."""
        return self.ipam.default_subnet6 if self.ipam is not None else None

    async def _put_on_bridge(self, address: Interface) -> None:
        try:
            switched = await trio.to_thread.run_sync(_add_to_bridge, address)
        except (MeshnetError, OSError) as e:
            raise UserError(f"cannot put {address} on {BRIDGE}: {e}") from None
        if switched:
            self.forwarding_enabled = True
            family = f"IPv{address.version}"
            log.info("%s: %s forwarding switched on (for the off-ramp)", self._nick, family)
            if address.version == 6:
                deaf = await trio.to_thread.run_sync(_taking_router_advertisements)
                if deaf:
                    log.warning(
                        "%s: with IPv6 forwarding on, %s no longer learn routes from router "
                        "advertisements (accept_ra 1); set accept_ra to 2 where they need them",
                        self._nick,
                        ", ".join(deaf),
                    )
        await self._set_default_routes(address.network)

    def adopt_soon(self, port: str = "", addresses: tuple[str, ...] = ()) -> None:
        """Another tool is putting a container's port on the bridge (Docker's network plugin,
        whose port Docker moves into the container after the plugin answers): look for it at
        once and often, for a while. ``addresses``: what that tool gave it (the plugin's IPAM
        addresses); the port is adopted with them once its container shows them all, not
        before (Docker sets them one family after the other), for at most ANNOUNCED_FOR."""
        now = trio.current_time()
        self._eager_until = max(self._eager_until, now + EAGER_FOR)
        if port and addresses:
            wanted = frozenset(ipaddress.ip_interface(a) for a in addresses)
            self._announced[port] = (wanted, now + ANNOUNCED_FOR)
        self._wake.set()

    async def _follow_bridge(self) -> None:
        """Ports that came or went behind our back (a container deleted, another tool)."""
        while True:
            eager = trio.current_time() < self._eager_until or bool(self._announced)
            tick = RESCAN_TICK if self._notified and not self._stale else TICK
            with trio.move_on_after(EAGER_TICK if eager else tick):
                await self._wake.wait()
            self._wake = trio.Event()
            async with self._lock:
                if await self._reconcile_ports() or self._stale:
                    await self._update_in_background()

    async def _update_in_background(self) -> None:
        """`_update` where no one waits for it: a failure is logged (once until it works again)
        and retried at the next scan, never the end of the router. Meanwhile the table keeps
        what it had, which fails closed: a port it does not know stays shut."""
        stale = self._stale
        try:
            await self._update()
        except UserError as e:
            if not stale:
                log.error("%s: isolation not updated (retried at the next scan): %s", self._nick, e)
            self._stale = True
            return
        if stale:
            log.info("%s: isolation updated again", self._nick)

    async def _watch_links(self) -> None:
        """Wake `_follow_bridge` when the kernel reports a link change (a port put on the bridge
        or gone with its container), so that an idle host need not scan its bridge often."""
        try:
            monitor = trio.socket.from_stdlib_socket(netlink.open_link_monitor())
        except OSError as e:
            log.warning("%s: no link notifications (%s): the bridge is scanned every %.0f s",
                        self._nick, e, TICK)  # fmt: skip
            return
        self._notified = True
        with monitor:
            while True:
                try:
                    data = await monitor.recv(65536)
                except OSError:  # ENOBUFS: notifications were lost; look at the bridge
                    self._wake.set()
                    continue
                if netlink.links_changed(data):
                    self._wake.set()

    async def _reconcile_ports(self) -> bool:
        """Forget ports that left the bridge, adopt unknown ones; True if anything changed."""
        # A record without a MAC (from an older state file) is adopted again to learn it.
        known = {port for port, record in self.state.ports.items() if record.mac}
        now = trio.current_time()
        for port, (_, until) in list(self._announced.items()):
            if now >= until:  # never showed them all: adopted (if ever) with what it shows
                del self._announced[port]
        unresolved = set(self._unresolved)
        scan = await trio.to_thread.run_sync(_scan_bridge, known, unresolved)
        if scan is None:
            return False
        present, found = scan
        changed = False
        for gone in set(self.state.ports) - present:
            del self.state.ports[gone]
            changed = True
        if changed:
            for listener in self.ports_left_listeners:
                listener()
        unknown = present - known
        if found is None:
            return changed
        adopted = []
        waiting = set()
        for a in found:
            if a.host_ifname in unknown:
                addresses = a.addresses
                announced = self._announced.pop(a.host_ifname, None)
                if announced is not None:
                    wanted = announced[0]
                    shown = tuple(x for x in a.addresses if ipaddress.ip_interface(x) in wanted)
                    if len(shown) < len(wanted):  # not all configured yet: look again soon
                        self._announced[a.host_ifname] = announced
                        waiting.add(a.host_ifname)
                        continue
                    addresses = shown  # what the tool gave, not whatever else the port shows
                record = self.state.ports[a.host_ifname] = PortRecord(
                    a.namespace, a.ifname, addresses, a.mac
                )
                adopted.append(record)
                log.info(
                    "%s: isolation adopted %s (%s) with %s",
                    self._nick,
                    a.namespace,
                    a.host_ifname,
                    ", ".join(addresses) or "no address",
                )
                changed = True
        await self._route_to_dns(adopted)  # joined by another tool (Docker's network plugin)
        self._unresolved = present - set(self.state.ports) - waiting
        if self._unresolved:
            log.warning(
                "%s: no container found for bridge ports %s: they stay shut",
                self._nick,
                ", ".join(sorted(self._unresolved)),
            )
        return changed

    async def _update(self) -> None:
        """Apply and persist the state (the caller holds the lock)."""
        if self.isolation == "on":
            await self._apply()
        self._save()

    # --- attachments (the node's isolation step)

    async def attached(
        self, container: str, ifname: str, addresses: list[str], result: dict[str, Any]
    ) -> None:
        """Isolate a port the data plane just attached (``result`` is its attachment): only
        the addresses meshnet gave it, and a default route via an exposed address of its
        subnet and a route to the DNS server if it needs them."""
        if not self._following:  # starting or stopping: no table to put it in
            raise UserError(f"{container} not attached: isolation is not running")
        async with self._lock:
            port = str(result["host_ifname"])
            old = self.state.ports.get(port)
            given = [str(ipaddress.ip_interface(a)) for a in addresses]
            kept = [a for a in (old.addresses if old else ()) if a not in given]
            record = PortRecord(
                str(result["namespace"]), ifname, tuple(kept + given), str(result["mac"])
            )
            self.state.ports[port] = record
            try:
                await self._update()
            except BaseException as e:  # the node undoes the attach: forget what it gave
                if old is None:
                    self.state.ports.pop(port, None)
                else:
                    self.state.ports[port] = old
                if isinstance(e, UserError):
                    raise UserError(
                        f"{container} not attached: its isolation rules failed: {e}"
                    ) from None
                raise
            for gateway in gateways_for(record.interfaces(), self.state.exposures()):
                await trio.to_thread.run_sync(_set_default_route, record, gateway)
            await self._route_to_dns([record])

    async def detached(self, container: str, ifname: str, addresses: list[str]) -> None:
        """The data plane took ``addresses`` (all, if none are named) off a port."""
        if not self._following:
            return
        async with self._lock:
            self._forget_addresses(container, ifname, addresses)
            await self._reconcile_ports()
            await self._update()

    # --- the DNS server's address (the DNS service's listener)

    async def _dns_moved(self, listen: tuple[Interface, ...]) -> None:
        """The DNS server listens somewhere else (or stopped): let every container reach it."""
        async with self._lock:
            self._dns = tuple(i.ip for i in listen)
            await self._update()
            await self._route_to_dns(list(self.state.ports.values()))

    async def _route_to_dns(self, records: list[PortRecord]) -> None:
        for address in self._dns:
            for record in records:
                if needs_route_to(record, address):
                    await trio.to_thread.run_sync(_set_host_route, record, address)

    def _forget_addresses(self, container: str, ifname: str, addresses: list[str]) -> None:
        try:
            namespace = attachment.resolve_namespace(container).name
        except UserError:
            return  # gone with its namespace: the bridge no longer has its port either
        ips = {ipaddress.ip_interface(a).ip for a in addresses}
        for port, record in list(self.state.ports.items()):
            if record.namespace != namespace or record.ifname != ifname:
                continue
            if not addresses:
                del self.state.ports[port]
                continue
            rest = tuple(a for a in record.addresses if ipaddress.ip_interface(a).ip not in ips)
            self.state.ports[port] = PortRecord(record.namespace, record.ifname, rest, record.mac)

    async def _set_default_routes(self, network: Network) -> None:
        """Local containers of the subnet that have no default route (of its family) get one
        via the host."""
        exposed = self.state.exposed.get(network)
        if exposed is None:
            return
        for record in list(self.state.ports.values()):
            if any(a.network == network for a in record.interfaces()):
                await trio.to_thread.run_sync(_set_default_route, record, exposed.address.ip)

    async def _clear_default_routes(self, address: Interface) -> None:
        for record in list(self.state.ports.values()):
            if any(a.network == address.network for a in record.interfaces()):
                await trio.to_thread.run_sync(_clear_default_route, record, address.ip)

    # --- expose and hide (the kernel's part of the node's use cases)

    def exposed_as(self, network: Network) -> Interface | None:
        """The address the subnet is exposed as, if it is."""
        exposed = self.state.exposed.get(network)
        return None if exposed is None else exposed.address

    def exposed_addresses(self) -> list[Interface]:
        return [e.address for e in self.state.exposed.values()]

    async def expose(
        self, addresses: list[Interface], *, masquerade: bool = True, fqdn: str | None = None
    ) -> list[dict[str, Any]]:
        """Put the addresses on the bridge and open the tables for them, all or nothing (their
        IPAM reservation is the caller's); what each subnet is exposed as now."""
        out = []
        async with self._lock:
            self.require_running()
            new = []
            for address in addresses:
                exposed = self.state.exposed.get(address.network)
                if exposed is not None and exposed.address != address:
                    raise UserError(f"{address.network} is exposed as {exposed.address} already")
                if exposed is None:
                    exposed = self.state.exposed[address.network] = Exposed(address)
                    new.append(address)
                exposed.masquerade = masquerade
                if fqdn is not None and fqdn not in exposed.names:
                    exposed.names += (fqdn,)
                out.append(exposed.as_json())
            try:
                await self._open_dns()  # open first: the address never answers half-configured
                await self._update()
                for address in new:
                    await self._put_on_bridge(address)
            except BaseException:
                for address in new:
                    self.state.exposed.pop(address.network, None)
                with trio.CancelScope(shield=True):
                    for address in new:
                        await trio.to_thread.run_sync(_remove_from_bridge, address)
                    await self._update()
                raise
        for address in new:
            log.info(
                "%s: exposed %s%s",
                self._nick,
                address,
                "" if masquerade else " (without masquerade)",
            )
        return out

    def _hide_targets(self, specs: list[str]) -> list[Network]:
        if not specs:
            return list(self.state.exposed)
        targets: list[Network] = []
        for spec in map(parse_exposure, specs):
            if spec.address is not None:
                exposed = self.state.exposed.get(spec.address.network)
                if exposed is not None and exposed.address == spec.address:
                    targets.append(spec.address.network)
            else:
                default = self.default_subnet if spec.family == 4 else self.default_subnet6
                network = spec.subnet or default
                if network is not None and network in self.state.exposed:
                    targets.append(network)
        return targets

    async def hide(self, specs: list[str]) -> list[Exposed]:
        """Take what the specs name (everything, if none) off the bridge and out of the tables;
        what was hidden (giving its addresses and names back is the caller's)."""
        self.require_running()
        async with self._lock:
            hidden = [self.state.exposed.pop(n) for n in dict.fromkeys(self._hide_targets(specs))]
            if not hidden:
                return []
            for exposed in hidden:
                await self._clear_default_routes(exposed.address)
                await trio.to_thread.run_sync(_remove_from_bridge, exposed.address)
            await self._update()
            try:
                await self._open_dns()
            except UserError as e:
                log.error("%s: DNS firewall not updated after hide: %s", self._nick, e)
        for exposed in hidden:
            log.info("%s: hid %s", self._nick, exposed.address)
        return hidden

    # --- persistence

    def _load(self) -> RampsState:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return RampsState()
        except OSError as e:
            raise UserError(f"cannot read {self._path}: {e.strerror}") from None
        try:
            return RampsState.decode(raw)
        except ValueError as e:
            aside = set_aside(self._path)
            self.rebuilding = True
            log.error(
                "%s: unreadable %s (%s): moved aside to %s; rebuilding what is exposed from "
                "IPAM and DNS, and container ports from the bridge",
                self._nick,
                self._path,
                e,
                aside.name,
            )
            return RampsState()

    def _save(self) -> None:
        data = self.state.encode()
        if data == self._saved or self._forgotten:
            return
        write_atomically(self._path, data)
        self._saved = data

    def forget_state(self) -> None:
        """After ``meshnet reset``: the next start exposes nothing."""
        self._forgotten = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)

    # --- status and API

    def summary(self) -> dict[str, Any]:
        """What `meshnet status` shows."""
        subnets = {str(n) for p in self.state.nft_ports() for n in p.subnets(4) + p.subnets(6)}
        return {
            "exposed": [e.as_json() for e in self.state.exposed.values()],
            "isolation": {
                "state": self.isolation,
                "ports": len(self.state.ports),
                "subnets": sorted(subnets),
            },
        }

    async def status(self) -> dict[str, Any]:
        dropped = await trio.to_thread.run_sync(nftables.counters)
        return {
            **self.summary(),
            "masquerade_local": not self.no_masq_local,
            "forwarding_enabled": self.forwarding_enabled,
            "dropped": {c: dropped.get(c, 0) for c in nftables.COUNTERS},
            "ports": [
                {
                    "port": name,
                    "namespace": p.namespace,
                    "ifname": p.ifname,
                    "addresses": list(p.addresses),
                }
                for name, p in sorted(self.state.ports.items())
            ],
        }
