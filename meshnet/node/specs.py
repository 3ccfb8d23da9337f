"""The user's address arguments: one grammar for attach, run, expose and hide.

A spec is one of

* nothing, or ``net:default``: an address IPAM picks in the default subnet;
* ``net:CIDR``: an address IPAM picks in that subnet (groups of containers isolated from each
  other);
* ``ip:ADDR[/LEN]``: exactly that address, claimed through IPAM (refused if held elsewhere);
* ``CIDR``: that address; inside the allocation range it is claimed through IPAM too, so it can
  never be handed to another container. Outside it (or IPv6) it is used as given.

Expose and hide take the same grammar, but an exact address must be an IPv4 host address of a
subnet: it becomes the host's gateway there. Pure (no trio, no kernel), so the CLI checks a
user's mistake before it asks the router anything.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Interface, IPv4Network

from meshnet.errors import UserError


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
            raise UserError(f"bad subnet {value!r} in {text!r}: {e}") from None
        return AddressSpec(subnet=subnet, text=text)
    if text.startswith("ip:"):
        value = text[3:]
        try:
            address = IPv4Interface(value if "/" in value else f"{value}/32")
        except ValueError as e:
            raise UserError(f"bad address {value!r} in {text!r}: {e}") from None
        return AddressSpec(SpecKind.CLAIM, address=address, text=text)
    if "/" not in text:
        raise UserError(
            f"bad address {text}: needs a prefix length, as in 10.32.0.5/12 "
            "(or use ip:ADDR, net:CIDR, or nothing to let IPAM choose)"
        )
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError as e:
        raise UserError(f"bad address {text}: {e}") from None
    if isinstance(iface, IPv4Interface):
        return AddressSpec(SpecKind.CLAIM, address=iface, text=text)
    return AddressSpec(SpecKind.STATIC, text=text)


def parse_exposure(text: str) -> AddressSpec:
    """A spec for expose or hide: a subnet, or an IPv4 host address with its subnet's prefix
    length; UserError (one line) otherwise."""
    spec = parse_spec(text)
    if spec.kind is SpecKind.STATIC:
        raise UserError(f"bad address {text!r}: expose takes IPv4 addresses")
    address = spec.address
    if address is None:
        return spec
    if "/" not in text:
        raise UserError(
            f"bad address {text!r}: give the subnet's prefix length, as in 10.32.1.1/24 "
            "(or net:CIDR, or nothing for the default subnet)"
        )
    net = address.network
    if net.prefixlen > 30 or address.ip in (net.network_address, net.broadcast_address):
        raise UserError(f"bad address {text!r}: not a host address of a subnet")
    return spec
