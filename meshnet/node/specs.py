"""The user's address arguments: one grammar for attach, run, expose and hide.

A spec is one of

* nothing: one address IPAM picks in the default subnet, and one in the default IPv6 subnet
  when the IPv6 ring is on (dual stack);
* ``net:default``: an address IPAM picks in the default (IPv4) subnet; ``net:default6`` one in
  the default IPv6 subnet (alone: an IPv6-only container);
* ``net:CIDR``: an address IPAM picks in that subnet, IPv4 or IPv6 (groups of containers
  isolated from each other);
* ``ip:ADDR[/LEN]``: exactly that address, claimed through IPAM (refused if held elsewhere);
* ``CIDR``: that address; inside an allocation range it is claimed through IPAM too, so it can
  never be handed to another container. Outside them it is used as given.

Expose and hide take the same grammar (nothing: the default subnet of each family, as attach), but
an exact address must be a host address of a subnet, IPv4 or IPv6: it becomes the host's gateway
there. Detach takes it too (``net:`` naming the
container's addresses in that subnet). Pure (no trio, no kernel), so the CLI checks a user's
mistake before it asks the router anything.

Every malformed address a user gives, here or in DNS, is told by ``bad_address`` in one shape:
``bad address 'TEXT': REASON``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network

from meshnet.errors import bad_address, why


class SpecKind(Enum):
    ALLOCATE = "allocate"  # IPAM picks one in ``subnet`` (None: the default subnet)
    CLAIM = "claim"  # exactly ``address``, through IPAM where it is in range (else as given)


@dataclass(frozen=True)
class AddressSpec:
    kind: SpecKind = SpecKind.ALLOCATE
    subnet: IPv4Network | IPv6Network | None = None
    address: IPv4Interface | IPv6Interface | None = None
    text: str = field(default="", compare=False)  # as the user wrote it
    version: int = 4  # of the default subnet an ALLOCATE without ``subnet`` picks from

    @property
    def family(self) -> int:
        """4 or 6: of the address this spec gives."""
        if self.subnet is not None:
            return self.subnet.version
        if self.address is not None:
            return self.address.version
        return self.version

    @property
    def exact(self) -> bool:
        """Given as ``ip:``: outside IPAM's range it is refused, not used as given."""
        return self.text.startswith("ip:")


DEFAULT_SUBNET = AddressSpec()
DEFAULT_SUBNET6 = AddressSpec(version=6, text="net:default6")

#: What an address argument may be: the hint of a message about one that is none of them.
FORMS = "give a CIDR such as 10.32.1.5/12, ip:ADDR[/LEN], net:CIDR, net:default or net:default6"


def parse_spec(text: str) -> AddressSpec:
    """One of the user's address arguments; UserError (one line) if it is malformed."""
    text = text.strip()
    if text in ("net:default", "default"):
        return AddressSpec(text=text)
    if text in ("net:default6", "default6"):
        return AddressSpec(version=6, text=text)
    if text.startswith("net:"):
        value = text[4:]
        try:
            subnet = ipaddress.ip_network(value)
        except ValueError as e:
            raise bad_address(text, why(value, e)) from None
        return AddressSpec(subnet=subnet, text=text)
    if text.startswith("ip:"):
        value = text[3:]
        try:
            if "/" not in value:
                value += "/128" if ":" in value else "/32"
            address = ipaddress.ip_interface(value)
        except ValueError as e:
            raise bad_address(text, why(value, e)) from None
        return AddressSpec(SpecKind.CLAIM, address=address, text=text)
    if "/" not in text:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise bad_address(text, FORMS) from None
        raise bad_address(
            text,
            f"give the prefix length, as in {text}/12 (or ip:{text}, or nothing to let IPAM "
            "choose)",
        )
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise bad_address(text, FORMS) from None
    return AddressSpec(SpecKind.CLAIM, address=iface, text=text)


def default_specs(ipv6: bool) -> list[AddressSpec]:
    """What attach gives a container named with no address: dual stack when the IPv6 ring
    is on."""
    return [DEFAULT_SUBNET, DEFAULT_SUBNET6] if ipv6 else [DEFAULT_SUBNET]


def looks_like_spec(text: str) -> bool:
    """Whether an argument is an address spec rather than a container (a namespace name, a PID,
    a path, a Docker name or id): what `attach net:default` alone is missing."""
    text = text.strip()
    if text.startswith(("net:", "ip:")):
        return True
    try:
        ipaddress.ip_interface(text)
    except ValueError:
        return False
    return "/" in text


@dataclass(frozen=True)
class ExposureSpec:
    """What expose and hide name: a subnet (None: the default one of ``version``) or a host
    address in one."""

    subnet: IPv4Network | IPv6Network | None = None
    address: IPv4Interface | IPv6Interface | None = None
    text: str = field(default="", compare=False)
    version: int = 4  # of the default subnet, when neither is given

    @property
    def family(self) -> int:
        if self.address is not None:
            return self.address.version
        return self.subnet.version if self.subnet is not None else self.version


def default_exposures(ipv6: bool) -> list[ExposureSpec]:
    """What expose exposes when told nothing: as attach, dual stack when the IPv6 ring is on."""
    return [ExposureSpec(), ExposureSpec(version=6)] if ipv6 else [ExposureSpec()]


#: The longest prefix a subnet to expose may have: room for the host and a container.
_LONGEST_PREFIX = {4: 30, 6: 126}


def parse_exposure(text: str) -> ExposureSpec:
    """A spec for expose or hide: a subnet, or a host address (IPv4 or IPv6) with its subnet's
    prefix length; UserError (one line) otherwise."""
    spec = parse_spec(text)
    address, subnet = spec.address, spec.subnet
    if address is None:
        return ExposureSpec(subnet, text=text, version=spec.version)
    if "/" not in text:
        example = "fd00:1::1/64" if address.version == 6 else "10.32.1.1/24"
        raise bad_address(
            text,
            f"give the subnet's prefix length, as in {example} "
            "(or net:CIDR, or nothing for the default subnet)",
        )
    net = address.network
    # IPv6 has no broadcast address; its subnet's first one is the routers' anycast address.
    reserved = {net.network_address} | ({net.broadcast_address} if net.version == 4 else set())
    if net.prefixlen > _LONGEST_PREFIX[net.version] or address.ip in reserved:
        raise bad_address(text, "not a host address of a subnet")
    return ExposureSpec(address=address, text=text)
