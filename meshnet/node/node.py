"""The node: what this router does for its users, each use case one pipeline over the services.

Attach is IPAM (allocate; undo: release) → data plane (veth and addresses; undo: take the new
addresses off, the veth with the last) → isolation (the ramps record the port; undo: forget it;
a failure fails the attach: a container is never attached unisolated) → the data plane's
gratuitous ARP (only now: the bridge drops what an unknown port sends) → DNS (name the
addresses; the last step, so nothing after it can fail). Detach, hide and reset run their steps
in the same order without undo: each step is idempotent and what one of them cannot remove (a
namespace that is gone) must not keep the others from giving back theirs.
Expose is IPAM → the ramps (bridge address and tables, all or nothing inside) → DNS.

The Docker and CNI joins are the same attach and detach with a ``Target`` that names their keys:
IPAM and DNS go by the runtime's id instead of the namespace's identity.

A namespace that goes away without a detach (deleted, its last process ended) takes its port
off the bridge: the ramps see it go, and the node then gives back what IPAM holds for every
namespace that is provably gone, with the names DNS has for those addresses
(``collect_gone_namespaces``; also once at start, which renames keys from before cookies).
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING, Any

import trio

from meshnet.constants import CONTAINER_IFNAME
from meshnet.errors import MeshnetError, UserError
from meshnet.gossip.identity import format_peer_name
from meshnet.gossip.router import Router
from meshnet.ipam.allocator import IPAddress
from meshnet.node import namespace_owners
from meshnet.node.addresses import addresses_for, detach_addresses, release_only
from meshnet.node.namespace_owners import ByInode, Release, parse_owner
from meshnet.node.pipeline import Pipeline
from meshnet.node.ramps import Ramps
from meshnet.node.ramps_state import Exposed, Interface, owner_id, parse_owner_id
from meshnet.node.specs import ExposureSpec, default_exposures, parse_exposure

if TYPE_CHECKING:
    from meshnet.dataplane.service import DataPlane
    from meshnet.dns.service import DnsService
    from meshnet.ipam.service import IpamService

log = logging.getLogger("meshnet.node")


class Unavailable(UserError):
    """The use case needs a service this router runs without (the API answers 409)."""


@dataclass(frozen=True)
class Target:
    """Whom an attach or detach is for, and under which keys.

    ``namespace`` is what the data plane resolves (a namespace's name, a PID or a path; empty
    when there is none any more). ``owner`` is IPAM's key, None for the namespace's identity (per
    interface beyond ``ethwe``). ``records`` is DNS's key, None for the namespace itself, which
    is then also named after itself when no name is given; with a key of its own a target is
    named only when a name is given.
    """

    namespace: str
    owner: str | None = None
    records: str | None = None


@dataclass(frozen=True)
class Attached:
    attachment: dict[str, Any]  # the data plane's attachment, as JSON
    dns_name: str | None


@dataclass(frozen=True)
class Detached:
    detached: bool  # an interface or address was taken off
    released: tuple[IPAddress, ...]  # what IPAM took back


class Node:
    """The use cases over the daemon's services; any but the router may be absent."""

    def __init__(
        self,
        router: Router,
        *,
        ipam: IpamService | None = None,
        dns: DnsService | None = None,
        dataplane: DataPlane | None = None,
        ramps: Ramps | None = None,
    ) -> None:
        self.router = router
        self.ipam = ipam
        self.dns = dns
        self.dataplane = dataplane
        self.ramps = ramps
        self.peer = format_peer_name(router.identity.name)
        self._nick = router.identity.nickname
        self._ports_left = trio.Event()
        #: IPAM keys an attach is under way for: never released as gone meanwhile (a namespace
        #: out of sight has no port yet that would say it lives).
        self._attaches: collections.Counter[str] = collections.Counter()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The ramps (with a data plane), and IPAM reserving what they expose again; what IPAM
        holds for namespaces that went away meanwhile is given back before any attach."""
        async with trio.open_nursery() as nursery:
            if self.ramps is not None and self.dataplane is not None:
                await nursery.start(self.ramps.serve, self.dataplane)
                if self.ramps.rebuilding:
                    await self._rebuild_exposed(self.ramps)
                nursery.start_soon(self._reclaim_exposed, self.ramps)
                await self.collect_gone_namespaces()
                self.ramps.ports_left_listeners.append(self._on_ports_left)
                nursery.start_soon(self._collect_when_ports_leave)
            task_status.started()

    # --- the services a use case needs

    def require_dataplane(self) -> DataPlane:
        if self.dataplane is None:
            raise Unavailable("this router runs without a data plane (--no-dataplane)")
        return self.dataplane

    def require_ipam(self) -> IpamService:
        if self.ipam is None:
            raise Unavailable("this router runs without IPAM")
        return self.ipam

    def require_ramps(self) -> Ramps:
        if self.ramps is None:
            raise Unavailable("this router runs without the ramps")
        return self.ramps

    def dns_name(self, name: Any) -> str | None:
        """The FQDN for a request's ``name`` (None: none given, or no DNS); UserError if bad."""
        return self.dns.name_for(name) if self.dns is not None and name is not None else None

    # --- attach and detach

    async def attach(
        self,
        target: Target,
        specs: list[str],
        ifname: str = CONTAINER_IFNAME,
        fqdn: str | None = None,
    ) -> Attached:
        """Attach the target with addresses from IPAM (see ``specs`` for the grammar), isolate
        its port and name it; on failure nothing of it stays but what it had before."""
        dataplane = self.require_dataplane()
        with contextlib.ExitStack() as attaching:
            async with Pipeline(self._nick) as steps:
                fresh: list[str] = []  # addresses the data plane step adds: its undo takes them off
                if self.ipam is None:
                    addresses = list(specs)
                else:
                    ipam = self.ipam
                    owner = target.owner or await self._ipam_id(target.namespace, ifname)
                    attaching.enter_context(self._attaching(owner))
                    held = {a.ip for a in ipam.addresses_of(owner)}
                    mtu = dataplane.overlay_mtu or None
                    addresses = await addresses_for(ipam, owner, specs, mtu=mtu)
                    if not held:  # nothing of it is on the container: give it back
                        steps.undo_with(f"allocation for {owner}", lambda: ipam.release(owner))
                    fresh = [a for a in addresses if ipaddress.ip_interface(a).ip not in held]
                result = await dataplane.attach(target.namespace, addresses, ifname)
                if fresh:
                    steps.undo_with(
                        f"attach of {target.namespace}",
                        lambda: dataplane.detach(target.namespace, fresh, ifname),
                    )
                if self.ramps is not None:
                    ramps = self.ramps
                    await ramps.attached(target.namespace, ifname, addresses, result)
                    if fresh:  # (none named would forget the whole port)
                        steps.undo_with(
                            f"isolation of {target.namespace}",
                            lambda: ramps.detached(target.namespace, ifname, fresh),
                        )
                # Only now: until its port is isolated, the bridge drops what the container sends.
                await dataplane.announce(target.namespace, result)
                dns_name = self._register(target, result, fqdn)
        return Attached(result, dns_name)

    def _register(self, target: Target, result: dict[str, Any], fqdn: str | None) -> str | None:
        if self.dns is None:
            return None
        if target.records is None:
            return self.dns.attached(result, fqdn)
        if fqdn is None:
            return None
        return self.dns.attached({**result, "namespace": target.records}, fqdn)

    async def detach(
        self,
        target: Target,
        addresses: list[str],
        ifname: str = CONTAINER_IFNAME,
        *,
        gone_ok: bool = False,
    ) -> Detached:
        """Take the addresses (all, if none are named; specs as attach takes them) off the
        target, give them back to IPAM and remove their names. With ``gone_ok`` (a runtime
        cleaning up after a container that may be gone), what the data plane cannot find is not
        an error: the rest is still done.
        """
        owner = target.owner
        if owner is None and self.ipam is not None:
            owner = await self._ipam_id(target.namespace, ifname)
        if addresses:  # the specs attach takes: net:CIDR is the container's addresses there
            held = self.ipam.addresses_of(owner) if self.ipam and owner else []
            subnet = subnet6 = None
            if self.ipam is not None:
                assert isinstance(self.ipam.config.subnet, IPv4Network)
                subnet, subnet6 = self.ipam.config.subnet, self.ipam.default_subnet6
            addresses = detach_addresses(addresses, held, subnet, subnet6)
        detached = False
        if target.namespace and (self.dataplane is not None or not gone_ok):
            dataplane = self.require_dataplane()
            try:
                detached = await dataplane.detach(target.namespace, addresses, ifname)
            except UserError as e:  # the namespace is gone, or that interface is not ours
                if not gone_ok:
                    raise
                log.info("%s: detach %s: %s", self._nick, owner, e)
            if detached and self.ramps is not None:
                await self.ramps.detached(target.namespace, ifname, addresses)
        released: list[IPAddress] = []
        if self.ipam is not None and owner is not None:
            # Only the addresses named, if any: the rest stay the container's.
            released = await self.ipam.release(owner, release_only(addresses))
        if self.dns is not None:
            self.dns.detached(target.records or target.namespace, addresses)
        return Detached(detached, tuple(released))

    async def forget(self, owners: list[str], records: str | None) -> tuple[IPAddress, ...]:
        """A runtime says a container is gone (its namespace with it): give back what IPAM
        holds under its keys, and remove its names (``records``: their key, if it has any)."""
        released: list[IPAddress] = []
        if self.ipam is not None:
            for owner in owners:
                released += await self.ipam.release(owner)
        if self.dns is not None and records is not None:
            self.dns.detached(records, [])
        return tuple(released)

    async def _ipam_id(self, container: str, ifname: str) -> str:
        """IPAM's key: the namespace, and the interface if it is not the usual one (so a second
        interface gets addresses of its own)."""
        namespace = await self.require_dataplane().namespace_id(container)
        return namespace_owners.owner_id(namespace, ifname)

    @contextlib.contextmanager
    def _attaching(self, owner: str) -> Iterator[None]:
        self._attaches[owner] += 1
        try:
            yield
        finally:
            self._attaches[owner] -= 1
            if not self._attaches[owner]:
                del self._attaches[owner]

    def _on_ports_left(self) -> None:
        self._ports_left.set()

    async def _collect_when_ports_leave(self) -> None:
        """A container's port left the bridge: its namespace may be gone (bursts coalesce)."""
        while True:
            await self._ports_left.wait()
            self._ports_left = trio.Event()
            await self.collect_gone_namespaces()

    async def collect_gone_namespaces(self) -> None:
        """Give back what IPAM holds for namespaces that are provably gone (and remove DNS's
        names for those addresses); rename keys from before cookies to their namespace's
        cookie key (see ``namespace_owners``)."""
        if self.ipam is None or self.dataplane is None:
            return
        held = self.ipam.holders(namespace_owners.PREFIX)
        if not held:
            return
        by_inode = any(isinstance(parse_owner(owner), ByInode) for owner in held)
        try:
            seen = await self.dataplane.namespaces(interfaces=by_inode)
        except (MeshnetError, OSError) as e:
            log.warning("%s: cannot look for namespaces that are gone: %s", self._nick, e)
            return
        if not seen.complete:
            log.info(
                "%s: bridge ports %s lead to namespaces out of sight: addresses of namespaces "
                "not seen are kept for now",
                self._nick,
                ", ".join(seen.unseen),
            )
        for action in namespace_owners.collect(held, seen):
            if isinstance(action, Release):
                if action.owner in self._attaches:
                    continue  # its namespace lives, whether in sight or not
                released = await self.ipam.release(action.owner)
                if self.dns is not None:
                    self.dns.forget_addresses([str(a) for a in released])
                log.info(
                    "%s: released %s of %s: %s",
                    self._nick,
                    ", ".join(map(str, released)),
                    action.owner,
                    action.why,
                )
            else:
                moved = self.ipam.rename(action.owner, action.to)
                log.info(
                    "%s: %s now held as %s (the same namespace, by its cookie)",
                    self._nick,
                    ", ".join(map(str, moved)),
                    action.to,
                )

    async def containers(self) -> list[dict[str, Any]]:
        return await self.require_dataplane().containers()

    # --- expose and hide

    async def expose(
        self, specs: list[str], *, masquerade: bool = True, name: str | None = None
    ) -> list[dict[str, Any]]:
        """Give the host an address in each subnet the specs name (if none: the default subnet,
        and the default IPv6 one when the IPv6 ring is on, as attach), through IPAM unless
        given, and a DNS name if asked; what each is exposed as."""
        ramps = self.require_ramps()
        ramps.require_running()
        ipv6 = self.ipam is not None and self.ipam.ipv6 is not None
        parsed = [parse_exposure(s) for s in specs] or default_exposures(ipv6)
        fqdn = self.dns_name(name)
        if name is not None and self.dns is None:
            raise UserError("this router has no DNS to register a name in")
        async with Pipeline(self._nick) as steps:
            # IPAM first, outside the ramps' lock: it may wait for its peers.
            addresses = [await self._expose_address(ramps, spec, steps) for spec in parsed]
            out = await ramps.expose(addresses, masquerade=masquerade, fqdn=fqdn)
        if fqdn is not None and self.dns is not None:
            for address in addresses:
                self.dns.add(owner_id(address.network, self.peer), fqdn, [str(address.ip)])
        return out

    async def _expose_address(self, ramps: Ramps, spec: ExposureSpec, steps: Pipeline) -> Interface:
        """The address to expose for a spec: the exposed one, or from IPAM, or as given."""
        ipam = self.ipam
        address: Interface
        if spec.address is None:
            network = spec.subnet or self._default_subnet(ramps, spec.family)
            exposed = ramps.exposed_as(network)
            if exposed is not None:
                return exposed
            if ipam is None:
                raise UserError(f"no IPAM to give an address in {network}: give the address")
            owner = owner_id(network, self.peer)
            held = ipam.addresses_of(owner)
            if isinstance(network, IPv6Network):
                address = await ipam.allocate6(owner, network)
            else:
                address = await ipam.allocate(owner, network)
        else:
            address = spec.address
            exposed = ramps.exposed_as(address.network)
            if exposed is not None and exposed != address:
                raise UserError(f"{address.network} is exposed as {exposed} already: hide it first")
            if ipam is None or not ipam.in_range(address.ip) or exposed is not None:
                return address
            owner = owner_id(address.network, self.peer)
            held = ipam.addresses_of(owner)
            address = await ipam.claim(owner, address)
        if not held:
            ip = address.ip
            steps.undo_with(f"reservation of {address}", lambda: ipam.release(owner, [ip]))
        return address

    def _default_subnet(self, ramps: Ramps, version: int) -> IPv4Network | IPv6Network:
        """The default subnet of a family (IPv6: once the IPv6 ring is known)."""
        if version == 4:
            return ramps.default_subnet
        if self.ipam is None or self.ipam.ipv6 is None:
            raise UserError("this router has no IPv6 ring (launched with --no-ipv6 or no IPAM)")
        subnet6 = self.ipam.default_subnet6
        if subnet6 is None:
            raise UserError(
                "the IPv6 ring is not known yet (the IPAM ring is still being agreed on): "
                "expose net:default first, or try again"
            )
        return subnet6

    async def hide(self, specs: list[str]) -> list[Exposed]:
        """Undo expose for what the specs name (everything, if none)."""
        ramps = self.require_ramps()
        hidden = await ramps.hide(specs)
        for exposed in hidden:
            network = exposed.address.network
            if self.dns is not None and exposed.names:
                self.dns.detached(owner_id(network, self.peer), [])
            if self.ipam is not None and self.ipam.in_range(exposed.address.ip):
                await self.ipam.release(owner_id(network, self.peer), [exposed.address.ip])
        return hidden

    async def _reclaim_exposed(self, ramps: Ramps) -> None:
        """Reserve exposed addresses of the range in IPAM again (idempotent; in the background,
        as IPAM may wait for its peers)."""
        if self.ipam is None:
            return
        for address in ramps.exposed_addresses():
            if not self.ipam.in_range(address.ip):
                continue
            try:
                await self.ipam.claim(owner_id(address.network, self.peer), address)
            except UserError as e:
                log.warning(
                    "%s: exposed %s not reserved in IPAM: %s", self._nick, address.network, e
                )

    async def _rebuild_exposed(self, ramps: Ramps) -> None:
        """The ramps lost their state file: expose again every address IPAM holds for this
        peer's exposures, under the names DNS holds for them (masquerade, the default, since
        the choice was in the lost file). Addresses given outside the range are not in IPAM and
        stay lost; the log says so."""
        if self.ipam is None:
            log.error("%s: without IPAM, what was exposed cannot be rebuilt", self._nick)
            return
        names: dict[str, list[str]] = {}
        if self.dns is not None:
            for r in self.dns.records.own_records():
                if r.live:
                    names.setdefault(r.container, []).append(r.name)
        for owner, held in sorted(self.ipam.holders("expose:").items()):
            parsed = parse_owner_id(owner)
            if parsed is None or parsed[1] != self.peer:
                continue
            network = parsed[0]
            for text in held:
                address = ipaddress.ip_interface(f"{text}/{network.prefixlen}")
                fqdns: list[str | None] = [*names.get(owner, [])] or [None]
                try:
                    for fqdn in fqdns:
                        await ramps.expose([address], fqdn=fqdn)
                except UserError as e:
                    log.error("%s: %s not exposed again: %s", self._nick, address, e)
                    continue
                log.warning("%s: exposed %s again (rebuilt, with masquerade)", self._nick, address)

    # --- IPAM's peers

    async def reset(self, *, force: bool) -> dict[str, Any]:
        """Hand this peer's addresses over and forget what it exposed; the caller stops the
        router once ``acknowledged`` is answered."""
        ipam = self.require_ipam()
        result = await ipam.reset(force=force)
        if result["acknowledged"]:
            ipam.forget_state()
            if self.ramps is not None:
                self.ramps.forget_state()
            log.info("reset: IPAM handed over; stopping")
        return result

    def rmpeer(self, peer: str) -> dict[str, Any]:
        """Reclaim a dead peer's addresses and purge its DNS records (hidden since it left)."""
        ipam = self.require_ipam()
        name = ipam.resolve_peer(peer)
        result = ipam.rmpeer(name)
        if self.dns is not None and name != self.router.identity.name:
            self.dns.forget_peer(name)
        return result

    def owners(self, prefix: str) -> dict[str, list[str]]:
        return self.require_ipam().holders(prefix)

    # --- status

    def status(self) -> dict[str, Any]:
        """The router's status, with what is exposed and isolated."""
        result = self.router.status()
        if self.ramps is not None:
            result.update(self.ramps.summary())
        return result
