"""What the ramps record and decide, without I/O: expose specs, the state kept in the state
directory (what is exposed, what each container port was given), and the nftables script that
state asks for. The service that applies it is ``meshnet.node.ramps``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from meshnet.constants import BRIDGE
from meshnet.dataplane.kernel import nftables
from meshnet.dataplane.kernel.nftables import Exposure, Port
from meshnet.errors import UserError

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = IPv4Network | IPv6Network

_OWNER = re.compile(r"^expose:(?P<subnet>[^/]+/\d+):(?P<peer>.+)$")


def owner_id(network: Network, peer: str) -> str:
    """IPAM's (and DNS's) holder of an exposed address: ends with the peer's name, as reset
    expects of addresses a peer holds for itself."""
    return f"expose:{network}:{peer}"


def parse_owner_id(owner: str) -> tuple[Network, str] | None:
    """The subnet and peer of an ``owner_id`` (None if it is none): an IPv6 subnet and the
    peer's name both hold colons, so the subnet ends at its prefix length."""
    match = _OWNER.match(owner)
    if match is None:
        return None
    try:
        return ipaddress.ip_network(match["subnet"]), match["peer"]
    except ValueError:
        return None


def gateways_for(addresses: list[Interface], exposures: list[Exposure]) -> list[IPAddress]:
    """The exposed addresses a container with ``addresses`` routes the world through, at most
    one per family: one in the same subnet as one of its addresses (in their order)."""
    by_network = {e.address.network: e.address.ip for e in exposures}
    found: dict[int, IPAddress] = {}
    for a in addresses:
        if a.network in by_network and a.version not in found:
            found[a.version] = by_network[a.network]
    return list(found.values())


@dataclass(frozen=True)
class PortRecord:
    """What meshnet attached through one bridge port."""

    namespace: str
    ifname: str
    addresses: tuple[str, ...]
    #: The container interface's MAC, the only source MAC its port may send from ("": not
    #: known yet, as in a state file written before MACs were recorded: adopted again).
    mac: str = ""

    def interfaces(self) -> list[Interface]:
        return [ipaddress.ip_interface(a) for a in self.addresses]


@dataclass
class Exposed:
    address: Interface
    masquerade: bool = True
    names: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"address": str(self.address), "masquerade": self.masquerade, "names": self.names}


@dataclass
class RampsState:
    exposed: dict[Network, Exposed] = field(default_factory=dict)
    ports: dict[str, PortRecord] = field(default_factory=dict)

    def encode(self) -> bytes:
        data = {
            "version": 1,
            "exposed": [e.as_json() for e in self.exposed.values()],
            "ports": {
                name: {
                    "namespace": p.namespace,
                    "ifname": p.ifname,
                    "addresses": p.addresses,
                    "mac": p.mac,
                }
                for name, p in sorted(self.ports.items())
            },
        }
        return json.dumps(data, indent=1, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> RampsState:
        """The state from ``encode``; ValueError if it is not."""
        try:
            data = json.loads(raw)
            state = cls()
            for e in data.get("exposed", []):
                address = ipaddress.ip_interface(e["address"])  # IPv6 too, since 2026-12
                names = tuple(str(n) for n in e.get("names", ()))
                state.exposed[address.network] = Exposed(address, bool(e["masquerade"]), names)
            for name, p in data.get("ports", {}).items():
                addresses = tuple(str(ipaddress.ip_interface(a)) for a in p["addresses"])
                state.ports[nftables.check_ifname(name)] = PortRecord(
                    str(p["namespace"]), str(p["ifname"]), addresses, _mac(p.get("mac", ""))
                )
        except (KeyError, TypeError, AttributeError, ValueError, UserError) as e:
            raise ValueError(f"malformed: {e!r}") from None
        return state

    def exposures(self) -> list[Exposure]:
        return [Exposure(e.address, e.masquerade) for e in self.exposed.values()]

    def nft_ports(self) -> list[Port]:
        return [Port(name, tuple(p.interfaces()), p.mac or None) for name, p in self.ports.items()]

    def script(
        self,
        allocation_range: IPv4Network,
        *,
        allocation_range6: IPv6Network | None = None,
        no_masq_local: bool,
        fresh_bridge: bool,
        inet_installed: bool,
        dns: Sequence[IPAddress] = (),
        own: Sequence[str] = (),
    ) -> str:
        """Both tables as they should be now: the inet one only while something is exposed.
        ``own``: the router's own ports on the bridge (the rest but the containers' are shut).
        ``allocation_range6``: the IPv6 ring's range, once known."""
        ports = self.nft_ports()
        networks: list[Network] = [allocation_range]
        networks += [allocation_range6] if allocation_range6 is not None else []
        networks += [n for n in self.exposed]
        networks += [a.network for p in ports for a in p.addresses]
        overlay4, overlay6 = nftables.overlay(networks)
        script = nftables.bridge_table(
            ports, overlay4, overlay6, dns=dns, own=own, fresh=fresh_bridge
        )
        if self.exposed:
            local = None
            if no_masq_local:
                local = [a.ip for p in ports for a in p.addresses]
            script += nftables.inet_table(
                BRIDGE, self.exposures(), overlay4, overlay6, local=local, fresh=not inet_installed
            )
        elif inet_installed or fresh_bridge:
            script += nftables.removal(["inet"])
        return script


def _mac(value: Any) -> str:
    return "" if value == "" else nftables.check_mac(str(value))


def needs_route_to(record: PortRecord, address: IPAddress) -> bool:
    """Whether a container reaches the address only through a route of its own: it has an
    address of that family, but none in a subnet that holds it."""
    same_family = [a for a in record.interfaces() if a.version == address.version]
    return bool(same_family) and not any(address in a.network for a in same_family)
