"""The DNS subsystem of the daemon: records on the ``dns`` gossip channel, and the server.

``DnsService`` owns this peer's ``Records`` (registered with the router before it starts, so the
first full state a neighbour gets includes them), persists our own records in the state
directory after every local change and reloads them on start, hides the records of peers the
router can no longer reach, re-asserts our records, expires tombstones, and runs the server.

Where the server listens: overlay addresses of the host on the bridge, IPv4 and IPv6 alike
(``--dns-address CIDR``, one per family, or else an IPv4 address IPAM allocates for
``dns:<peer name>``; the node adds more while it runs with ``listen_on``, e.g. the host's IPv6
overlay address). Every local container reaches them over the bridge: directly if an address is
inside one of its subnets, else by a route the ramps give it (told through
``listen_listeners``), which also let DNS past the isolation between subnets; containers on
other hosts can reach them too, through the overlay. The table in ``firewall`` keeps the host
otherwise closed to the overlay and the addresses closed to the underlay.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, overload

import trio

from meshnet.beats import next_beat
from meshnet.config import Config
from meshnet.constants import BRIDGE, IPV6_MIN_MTU
from meshnet.dataplane.kernel import attach as attachment
from meshnet.dataplane.kernel import netlink
from meshnet.dns import firewall
from meshnet.dns.answer import Resolver
from meshnet.dns.records import Records, decode_records, encode_records
from meshnet.dns.server import DnsServer
from meshnet.dns.settings import (
    Interface,
    check_listen_address,
    check_listen_addresses,
    parse_resolv_conf,
    parse_upstream,
    qualify,
)
from meshnet.errors import MeshnetError, RemoteProtocolError, UserError, bad_address
from meshnet.gossip.channel import Watched
from meshnet.gossip.identity import format_peer_name
from meshnet.gossip.router import Router
from meshnet.statefile import set_aside, write_atomically

if TYPE_CHECKING:
    from meshnet.dataplane.service import DataPlane

log = logging.getLogger("meshnet.dns")

CHANNEL = "dns"
STATE_FILE = "dns-records.msgpack"
#: How often old tombstones and departed peers' records are dropped; everything else the
#: records need (hiding unreachable peers, re-assertions, persistence) happens on news.
EXPIRE_EVERY = 10.0
ALLOCATE_RETRY = 5.0

Handler = Callable[[dict[str, Any]], Any]


class AddressAllocator(Protocol):
    """What the DNS service needs from IPAM (``meshnet.ipam.service.IpamService``)."""

    async def allocate(
        self, container_id: str, subnet: ipaddress.IPv4Network | None = None
    ) -> ipaddress.IPv4Interface: ...

    @overload
    async def claim(
        self, container_id: str, address: ipaddress.IPv4Interface
    ) -> ipaddress.IPv4Interface: ...

    @overload
    async def claim(
        self, container_id: str, address: ipaddress.IPv6Interface
    ) -> ipaddress.IPv6Interface: ...

    def in_range(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """Whether IPAM hands ``address`` out (its IPv4 range, or the IPv6 ring's)."""
        ...

    @property
    def ipv6(self) -> object | None:
        """The IPv6 ring's settings; None: IPv6 is off."""
        ...

    async def allocate6(
        self, container_id: str, subnet: ipaddress.IPv6Network | None = None
    ) -> ipaddress.IPv6Interface: ...


def host_upstreams(netns_dir: Path = netlink.NETNS_DIR, etc: Path = Path("/etc")) -> list[str]:
    """The host's resolvers: /etc/netns/<our namespace>/resolv.conf if we run in a named
    namespace that has one (what `ip netns exec` would show a program), else /etc/resolv.conf."""
    candidates = []
    try:
        own = os.stat("/proc/self/ns/net")
        for entry in sorted(os.listdir(netns_dir)):
            st = os.stat(netns_dir / entry)
            if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
                candidates.append(etc / "netns" / entry / "resolv.conf")
    except OSError:
        pass
    candidates.append(etc / "resolv.conf")
    for path in candidates:
        try:
            return parse_resolv_conf(path.read_text())
        except OSError:
            continue
    return []


class DnsService:
    def __init__(
        self,
        config: Config,
        router: Router,
        ipam: AddressAllocator | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = config.dns
        self.router = router
        self.dataplane: DataPlane | None = None
        self.ipam = ipam
        self._nick = router.identity.nickname
        self._path = config.state_dir / STATE_FILE
        self._rng = rng or random.Random()
        self.records = Records(peer=router.identity.name, now=time.time())
        self._saved = self._load()
        self._changed = trio.Event()  # news for _maintain: a merge, a local change, a new view
        router.register_channel(CHANNEL, Watched(self.records, lambda: self._changed.set()))
        #: Where the server answers now, IPv4 first (empty: nowhere yet, or no longer).
        self.listen: tuple[Interface, ...] = ()
        #: Told whenever ``listen`` changes (the ramps: every container may reach the server).
        self.listen_listeners: list[Callable[[tuple[Interface, ...]], Awaitable[None]]] = []
        self.state = "starting"
        self.upstreams = [parse_upstream(u) for u in (self.settings.upstreams or host_upstreams())]
        self.resolver: Resolver | None = None
        self.server: DnsServer | None = None
        # Where to listen (--dns-address or IPAM's, and what ``listen_on`` adds), with whether
        # we put the address on the bridge (and take it off) or its owner does.
        self._wanted: dict[Interface, bool] = {}
        self._wanted_changed = trio.Event()
        # Per address being set up, served or taken down: how to stop it, and when it is done.
        self._serving: dict[Interface, _Listening] = {}
        self._failed: dict[Interface, str] = {}
        # The firewall table: the port it is installed for (None: not installed), and the
        # addresses the host exposes on the overlay, which it lets through (``open_addresses``).
        self._firewall_port: int | None = None
        self._open: tuple[str, ...] = ()
        self._also: tuple[str, ...] = ()  # the server's other addresses (IPv6)
        self._firewall_lock = trio.Lock()

    # --- lifecycle

    async def serve(
        self,
        dataplane: DataPlane | None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the records; serve them once an address is known (IPAM may take a while)."""
        self.dataplane = dataplane
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._maintain)
            nursery.start_soon(self._follow_mesh)
            task_status.started()
            if self.dataplane is None:
                self.state = "off (no data plane)"
                return
            self.resolver = Resolver(self.records, self.settings.domain, self.settings.ttl)
            self.server = DnsServer(
                self.resolver,
                upstreams=self.upstreams,
                timeout=self.settings.upstream_timeout,
                nickname=self._nick,
                rng=self._rng,
            )
            nursery.start_soon(self._supervise)
            self.state = "waiting for an address"
            given = check_listen_addresses(self.settings.addresses)
            for listen in given:
                nursery.start_soon(self._claim, listen)
            if not given:
                allocated = await self._allocate()
                if allocated is None:
                    if not self._wanted:
                        self.state = "off (no address: give --dns-address)"
                    log.warning("%s: no DNS address: no --dns-address and no IPAM", self._nick)
                    return
                given = [allocated]
            for listen in given:
                self.listen_on(listen)
            if not any(i.version == 6 for i in given):
                listen6 = await self._listen_address6()
                if listen6 is not None:
                    self.listen_on(listen6)

    def listen_on(self, listen: Interface, *, add_address: bool = True) -> None:
        """Serve on ``listen`` too (an overlay address of the host on the bridge, any family).

        ``add_address``: put the address on the bridge (and take it off when done); False when
        its owner (the node, say) keeps it there. The firewall table covers it first either
        way. UserError for a prefix that leaves no route to containers.
        """
        check_listen_address(str(listen))
        self._wanted[listen] = add_address
        self._failed.pop(listen, None)
        self._wanted_changed.set()

    def stop_listening_on(self, listen: Interface) -> None:
        """No longer serve on ``listen`` (a no-op if we did not)."""
        self._failed.pop(listen, None)
        if self._wanted.pop(listen, None) is not None:
            self._wanted_changed.set()

    async def _allocate(self) -> Interface | None:
        if self.ipam is None:
            return None
        owner = "dns:" + format_peer_name(self.router.identity.name)
        while True:  # IPAM may need its peers first (consensus, or a donation of space)
            try:
                return await self.ipam.allocate(owner)
            except UserError as e:
                log.warning("%s: no DNS address from IPAM yet: %s", self._nick, e)
                await trio.sleep(ALLOCATE_RETRY)

    async def _listen_address6(self) -> Interface | None:
        """An IPv6 address from IPAM's IPv6 ring (None without one): the IPv4 ring exists by
        now, so this is at once (a seed peer) or one donation away."""
        if self.ipam is None or self.ipam.ipv6 is None:
            return None
        mtu = self.dataplane.overlay_mtu if self.dataplane is not None else 0
        if 0 < mtu < IPV6_MIN_MTU:  # the bridge carries no IPv6 (the kernel turns it off)
            log.info("%s: DNS over IPv4 only: the overlay MTU %d is below IPv6's", self._nick, mtu)
            return None
        owner = "dns:" + format_peer_name(self.router.identity.name)
        try:
            return await self.ipam.allocate6(owner)
        except UserError as e:
            log.warning("%s: DNS over IPv4 only: no IPv6 address from IPAM: %s", self._nick, e)
            return None

    async def _claim(self, listen: Interface) -> None:
        """Reserve a given address (``--dns-address``, either family) in IPAM if it hands such
        addresses out, so that no container gets it: an IPv6 one in the IPv6 ring as an IPv4
        one in the IPv4 ring.

        In the background: IPAM may wait for its peers to agree on the ring first.
        """
        if self.ipam is None or not self.ipam.in_range(listen.ip):
            return
        owner = "dns:" + format_peer_name(self.router.identity.name)
        try:
            await self.ipam.claim(owner, listen)
        except UserError as e:
            log.warning("%s: DNS address %s not reserved in IPAM: %s", self._nick, listen, e)

    async def _supervise(self) -> None:
        """Serve on exactly the wanted addresses: start new ones, stop dropped ones."""
        async with trio.open_nursery() as nursery:
            while True:
                self._wanted_changed = trio.Event()
                for listen in [i for i in self._serving if i not in self._wanted]:
                    stopping = self._serving[listen]
                    stopping.scope.cancel()
                    await stopping.done.wait()
                for listen, add_address in sorted(self._wanted.items(), key=_family_first):
                    if listen not in self._serving and listen not in self._failed:
                        self._serving[listen] = _Listening()
                        nursery.start_soon(self._serve_on, listen, add_address)
                await self._wanted_changed.wait()

    async def _serve_on(self, listen: Interface, add_address: bool) -> None:
        """One address: the table first and the address last, so that it is never reachable
        unfiltered; taken down in reverse. A failure leaves the others serving."""
        assert self.server is not None
        entry = self._serving[listen]
        address, cidr = str(listen.ip), str(listen)
        added = False
        failing = "no firewall for"
        try:
            with entry.scope:
                await self._install_firewall()
                failing = "cannot serve DNS on"
                if add_address:
                    added = True
                    await trio.to_thread.run_sync(_add_address, cidr)
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.server.serve, address, self.settings.port)
                    entry.bound = True
                    await self._listening()
                    log.info("%s: DNS for %s on %s", self._nick, self.settings.domain, cidr)
        except (MeshnetError, OSError) as e:
            why = f"{failing} {cidr}: {e}"
            self._failed[listen] = why
            log.error("%s: DNS server not running: %s", self._nick, why)
        finally:
            with trio.CancelScope(shield=True):
                entry.bound = False
                await self._listening()
                try:
                    if added:
                        await trio.to_thread.run_sync(_delete_address, cidr)
                finally:
                    del self._serving[listen]
                    try:
                        await self._install_firewall()
                    except UserError as e:
                        log.error("%s: DNS firewall table not updated: %s", self._nick, e)
                    entry.done.set()

    async def _listening(self) -> None:
        """Publish where the server answers now (and why nowhere, if it failed)."""
        listen = tuple(sorted((i for i, e in self._serving.items() if e.bound), key=_order))
        if self._failed and not listen:
            self.state = "off (" + "; ".join(self._failed.values()) + ")"
        if listen == self.listen:
            return
        self.listen = listen
        if self.resolver is not None:
            self.resolver.set_reverse_networks(str(i.network) for i in listen)
        for listener in list(self.listen_listeners):
            try:
                await listener(listen)
            except (MeshnetError, OSError) as e:
                log.error("%s: a DNS address listener failed: %s", self._nick, e)

    async def _install_firewall(self) -> None:
        """Make the table cover every address being served or set up (with the current open
        addresses), or remove it when there is none. Serialised: the last call wins."""
        async with self._firewall_lock:
            addresses = sorted(str(i.ip) for i in self._serving)
            if not addresses:
                if self._firewall_port is not None:
                    await trio.to_thread.run_sync(firewall.remove)
                    self._firewall_port = None
                return
            port = self.settings.port
            await trio.to_thread.run_sync(
                firewall.install, BRIDGE, addresses, port, firewall.TABLE, self._open
            )
            self._firewall_port = port

    async def open_addresses(self, addresses: list[str]) -> None:
        """Let the bridge reach these host addresses (what ``meshnet expose`` put there)."""
        self._open = tuple(sorted(set(addresses)))
        if self._firewall_port is not None:
            await self._install_firewall()

    async def _maintain(self) -> None:
        """Woken by news (see ``_changed``), else only to expire old records."""
        last_expire = time.monotonic()
        forged, next_log = 0, -math.inf  # forged records logged: one line per 10 s at most
        followed = -1  # the view version whose reachability the records follow
        while True:
            with trio.move_on_at(next_beat(trio.current_time(), EXPIRE_EVERY)):  # with the others
                await self._changed.wait()
            self._changed = trio.Event()
            if self.router.views.version != followed:
                followed = self.router.views.version
                self._follow_topology()
            if self.records.implausible != forged and trio.current_time() >= next_log:
                forged, next_log = self.records.implausible, trio.current_time() + 10.0
                log.warning(
                    "%s: dropped DNS records at implausible versions (forged): %d so far",
                    self._nick,
                    forged,
                )
            reasserted = self.records.take_reassertions()
            if reasserted is not None:
                self.router.gossip(CHANNEL, reasserted)
            if time.monotonic() - last_expire >= EXPIRE_EVERY:
                last_expire = time.monotonic()
                self.records.expire(time.time())
            self._save()

    async def _follow_mesh(self) -> None:
        """Woken only when the router publishes a changed view (never by a heartbeat)."""
        version = self.router.views.version
        while True:
            version, _ = await self.router.views.wait_newer(version)
            self._changed.set()

    def _follow_topology(self) -> None:
        """Hide the records of peers we cannot reach; show them again when they are back."""
        reachable = self.router.views.current.reachable
        origins = {r.origin for r in self.records.records()} - {self.records.peer}
        for origin in origins:
            if origin in reachable:
                if self.records.peer_returned(origin):
                    log.info("%s: DNS records of %s are back", self._nick, self.router.nick(origin))
            elif self.records.peer_gone(origin):
                log.info("%s: DNS records of %s hidden", self._nick, self.router.nick(origin))

    def forget_peer(self, peer: int) -> None:
        """``rmpeer``: the peer is gone for good; its records go now, not when they expire."""
        purged = self.records.forget_peer(peer)
        if purged:
            log.info("%s: %d DNS records of %s purged", self._nick, purged, format_peer_name(peer))

    # --- persistence

    def _load(self) -> bytes:
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return b""
        except OSError as e:
            raise UserError(f"cannot read DNS records {self._path}: {e.strerror}") from None
        try:
            self.records.restore(decode_records(data))
        except (RemoteProtocolError, ValueError) as e:
            # Not fatal, and not a reset: the mesh still holds our names, which we take back.
            aside = set_aside(self._path)
            self.records.recover(until=time.time() + self.records.tombstone_ttl)
            log.error(
                "%s: unreadable DNS records %s (%s): moved aside to %s; taking our names back "
                "from the mesh for %.0f s",
                self._nick,
                self._path,
                e,
                aside.name,
                self.records.tombstone_ttl,
            )
            return b""
        return data

    def _save(self) -> None:
        data = encode_records(self.records.own_records())
        if data == self._saved:
            return
        write_atomically(self._path, data)
        self._saved = data

    # --- registration (the node's attach and detach call these)

    def _publish(self, delta: bytes | None) -> None:
        if delta is not None:
            self.router.gossip(CHANNEL, delta)
            self._changed.set()  # saved by _maintain

    def name_for(self, name: Any) -> str | None:
        """The FQDN of an attach request's ``name`` (None: none given); UserError if bad."""
        if name is None:
            return None
        if not isinstance(name, str):
            raise UserError("the DNS name must be a string")
        return qualify(name, self.settings.domain)

    def attached(self, result: dict[str, Any], fqdn: str | None) -> str | None:
        """Register the name of a container the data plane just attached; the FQDN or None.

        Without a name, a container in a named namespace is registered under that name.
        """
        container = result.get("namespace")
        if not isinstance(container, str):
            return None
        if fqdn is None:
            if container.startswith("/"):
                return None  # a PID or a path: no name to give it
            try:
                fqdn = qualify(container, self.settings.domain)
            except UserError as e:
                log.info("%s: %s not registered in DNS: %s", self._nick, container, e)
                return None
        addresses = [_ip(a) for a in result.get("addresses", ()) if isinstance(a, str)]
        self.add(container, fqdn, [a for a in addresses if _registrable(a)])
        return fqdn

    def detached(self, container: str, addresses: list[str]) -> None:
        """Remove the records of a container (or of the given addresses) on detach."""
        container = container_id(container)
        now = time.time()
        if not addresses:
            self._publish(self.records.remove(container, now))
        for a in addresses:
            self._publish(self.records.remove(container, now, address=_ip(a)))
        self._save()

    def forget_addresses(self, addresses: list[str]) -> None:
        """Remove our records of these addresses, whatever container they name: IPAM took them
        back from a container that is gone without a detach (those of ``dns-add`` without a
        container stay: they name no container)."""
        gone = {_ip(a) for a in addresses}
        if not gone:
            return
        now = time.time()
        for r in self.records.own_records():
            if r.live and r.address in gone and r.container != EXTERNAL:
                self._publish(self.records.remove(r.container, now, address=r.address))
        self._save()

    def add(self, container: str, fqdn: str, addresses: list[str]) -> list[str]:
        now = time.time()
        for address in addresses:
            self._publish(self.records.register(fqdn, address, container, now))
        self._save()
        return addresses

    async def dns_add(self, body: dict[str, Any]) -> dict[str, Any]:
        """Name a container's addresses (its attached ones if none are given), or, without a
        container, any addresses: records of this router's own (``EXTERNAL``), gossiped like
        the others and removed by `dns-remove` without a container."""
        container, addresses, name = _dns_request(body)
        if name is None:
            raise UserError("give the name to register (--hostname FQDN)")
        fqdn = qualify(name, self.settings.domain)
        if container is None and not addresses:
            raise UserError("give the IP address(es) to name, or a container")
        cid = EXTERNAL if container is None else container_id(container)
        if not addresses:
            addresses = await self._attached_addresses(cid)
            if not addresses:
                raise UserError(f"{container} has no attached address: give the IP address(es)")
        added = self.add(cid, fqdn, [_ip(a) for a in addresses])
        return {"name": fqdn, "container": cid, "addresses": added}

    def dns_remove(self, body: dict[str, Any]) -> dict[str, Any]:
        container, addresses, name = _dns_request(body)
        fqdn = None if name is None else qualify(name, self.settings.domain)
        if container is None and not addresses and fqdn is None:
            raise UserError(
                "give the IP address(es), the name or a container whose names to remove"
            )
        cid = EXTERNAL if container is None else container_id(container)
        now = time.time()
        removed = 0
        targets: list[str | None] = [_ip(a) for a in addresses] or [None]
        for address in targets:
            delta = self.records.remove(cid, now, name=fqdn, address=address)
            if delta is not None:
                removed += len(decode_records(delta))
            self._publish(delta)
        self._save()
        return {"container": cid, "removed": removed}

    def dns_lookup(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str):
            raise UserError('expected {"name": NAME}')
        fqdn = qualify(name, self.settings.domain)
        return {"name": fqdn, "addresses": self.records.addresses(fqdn)}

    def dns_listen(self, body: dict[str, Any]) -> dict[str, Any]:
        """Serve on one more overlay address (``{"address": CIDR}``), e.g. an IPv6 one; or,
        with ``"stop": true``, no longer. Not persisted: ``--dns-address`` is for good."""
        cidr, stop = body.get("address"), body.get("stop", False)
        if not isinstance(cidr, str) or not isinstance(stop, bool):
            raise UserError('expected {"address": CIDR, "stop": false|true}')
        if self.server is None:
            raise UserError(f"no DNS server here: {self.state}")
        listen = check_listen_address(cidr)
        if stop:
            self.stop_listening_on(listen)
        else:
            self.listen_on(listen)
        return {"wanted": [str(i) for i in sorted(self._wanted, key=_order)]}

    async def _attached_addresses(self, container: str) -> list[str]:
        if self.dataplane is None:
            return []
        for c in await self.dataplane.containers():
            if c.get("namespace") == container:
                return [a for a in map(_ip, c.get("addresses", ())) if _registrable(a)]
        return []

    # --- status

    def status(self) -> dict[str, Any]:
        entries = []
        for origin, records in self.records.entries_by_peer().items():
            entries.append(
                {
                    "peer": format_peer_name(origin),
                    "nickname": self.router.nick(origin),
                    "local": origin == self.records.peer,
                    "records": [
                        {"name": r.name, "address": r.address, "container": r.container}
                        for r in records
                    ],
                }
            )
        return {
            "domain": self.settings.domain,
            "ttl": self.settings.ttl,
            "upstreams": [f"{a}:{p}" if ":" not in a else f"[{a}]:{p}" for a, p in self.upstreams],
            "upstream_timeout": self.settings.upstream_timeout,
            # The first (IPv4 if any) for the clients that write one nameserver, and all.
            "listen": str(self.listen[0]) if self.listen else None,
            "listen_addresses": [str(i) for i in self.listen],
            "port": self.settings.port,
            "state": self.state if not self.listen else "serving",
            "listen_errors": sorted(self._failed.values()),
            "entries": entries,
            "records": asdict(self.records.statistics()),
            "resolver": asdict(self.resolver.statistics()) if self.resolver else None,
            "server": asdict(self.server.statistics()) if self.server else None,
        }

    def api_routes(self) -> dict[tuple[str, str], Handler]:
        """Our routes (the node's attach and detach register and remove names through
        ``attached`` and ``detached``)."""
        return {
            ("GET", "/status/dns"): lambda _: self.status(),
            ("POST", "/dns/add"): self.dns_add,
            ("POST", "/dns/remove"): self.dns_remove,
            ("POST", "/dns/lookup"): self.dns_lookup,
            ("POST", "/dns/listen"): self.dns_listen,
        }


@dataclass
class _Listening:
    """One address the server is set up on, serves on or is taken off."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    bound: bool = False  # its sockets are open


def _order(listen: Interface) -> tuple[int, Interface]:
    return (listen.version, listen)


def _family_first(item: tuple[Interface, bool]) -> tuple[int, Interface]:
    return _order(item[0])


#: The container of the records `dns-add` makes for addresses outside any container: owned by
#: this router (their origin), like Weave's "weave:extern". No namespace, runtime id or CNI key
#: looks like it.
EXTERNAL = "(external)"


def container_id(spec: str) -> str:
    """How records name a container: its namespace as the data plane shows it (a netns name or
    a path), so attach and detach agree; anything else (a runtime's id) as it is."""
    try:
        return attachment.resolve_namespace(spec).name
    except UserError:
        return spec.strip()


def _dns_request(body: dict[str, Any]) -> tuple[str | None, list[str], str | None]:
    """The container (None: the addresses are no container's), the addresses and the name."""
    container = body.get("container")
    addresses = body.get("addresses", [])
    name = body.get("name")
    if (
        not (container is None or (isinstance(container, str) and container.strip()))
        or not isinstance(addresses, list)
        or not all(isinstance(a, str) for a in addresses)
        or not (name is None or isinstance(name, str))
    ):
        raise UserError('expected {"container": ID|null, "addresses": [IP...], "name": FQDN}')
    return container, addresses, name


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_interface(text.strip()).ip)
    except ValueError:
        raise bad_address(text, "not an IP address") from None


def _registrable(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return not (ip.is_link_local or ip.is_loopback or ip.is_unspecified or ip.is_multicast)


def _add_address(cidr: str) -> None:
    with netlink.namespace(None) as ns:
        ns.add_address(BRIDGE, cidr)  # an IPv6 one without DAD: answering at once


def _delete_address(cidr: str) -> None:
    try:
        with netlink.namespace(None) as ns:
            ns.delete_address(BRIDGE, cidr)
    except netlink.NetlinkError as e:  # the bridge went away with the namespace: nothing left
        log.debug("could not remove %s from %s: %s", cidr, BRIDGE, e)
