"""The user's address arguments: one grammar for attach, run, expose and hide.

A spec is one of

* nothing, or ``net:default``: an address IPAM picks in the default subnet;
* ``net:CIDR``: an address IPAM picks in that subnet (groups of containers isolated from each
  other);
* ``ip:ADDR[/LEN]``: exactly that address, claimed through IPAM (refused if held elsewhere);
* ``CIDR``: that address; inside the allocation range it is claimed through IPAM too, so it can
  never be handed to another container. Outside it (or IPv6) it is used as given.

Expose and hide take the same grammar, but an exact address must be an IPv4 host address of a
subnet: it becomes the host's gateway there. Detach takes it too (``net:`` naming the
container's addresses in that subnet). Pure (no trio, no kernel), so the CLI checks a user's
mistake before it asks the router anything.

Every malformed address a user gives, here or in DNS, is told by ``bad_address`` in one shape:
``bad address 'TEXT': REASON``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Interface, IPv4Network

from meshnet.errors import bad_address, why


class SpecKind(Enum):
    ALLOCATE = "allocate"  # IPAM picks one in ``subnet`` (None: the default subnet)
    CLAIM = "claim"  # exactly ``address``, through IPAM where it is in range
    STATIC = "static"  # used as given (IPv6: IPAM holds none)


@dataclass(frozen=True)
class AddressSpec:
    kind: SpecKind = SpecKind.ALLOCATE
    subnet: IPv4Network | None = None
    address: IPv4Interface | None = None
    text: str = field(default="", compare=False)  # as the user wrote it

    @property
    def exact(self) -> bool:
        """Given as ``ip:``: outside IPAM's range it is refused, not used as given."""
        return self.text.startswith("ip:")


DEFAULT_SUBNET = AddressSpec()

#: What an address argument may be: the hint of a message about one that is none of them.
FORMS = "give a CIDR such as 10.32.1.5/12, ip:ADDR[/LEN], net:CIDR or net:default"


def parse_spec(text: str) -> AddressSpec:
    """One of the user's address arguments; UserError (one line) if it is malformed."""
    text = text.strip()
    if text in ("net:default", "default"):
        return AddressSpec(text=text)
    if text.startswith("net:"):
        value = text[4:]
        try:
            subnet = IPv4Network(value)
        except ValueError as e:
            raise bad_address(text, why(value, e)) from None
        return AddressSpec(subnet=subnet, text=text)
    if text.startswith("ip:"):
        value = text[3:]
        try:
            address = IPv4Interface(value if "/" in value else f"{value}/32")
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
    if isinstance(iface, IPv4Interface):
        return AddressSpec(SpecKind.CLAIM, address=iface, text=text)
    return AddressSpec(SpecKind.STATIC, text=text)


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


def parse_exposure(text: str) -> AddressSpec:
    """A spec for expose or hide: a subnet, or an IPv4 host address with its subnet's prefix
    length; UserError (one line) otherwise."""
    spec = parse_spec(text)
    if spec.kind is SpecKind.STATIC:
        raise bad_address(text, "IPv6 is not supported here yet; give an IPv4 address")
    address = spec.address
    if address is None:
        return spec
    if "/" not in text:
        raise bad_address(
            text,
            "give the subnet's prefix length, as in 10.32.1.1/24 "
            "(or net:CIDR, or nothing for the default subnet)",
        )
    net = address.network
    if net.prefixlen > 30 or address.ip in (net.network_address, net.broadcast_address):
        raise bad_address(text, "not a host address of a subnet")
    return spec
