"""What `attach` asks of IPAM: turn the user's address specs into addresses for the kernel.

A spec is one of

* nothing at all: an address in the default subnet;
* ``net:CIDR``: an address in that subnet (groups of containers isolated from each other);
* ``ip:ADDR[/LEN]``: exactly that address, claimed through IPAM (refused if held elsewhere);
* ``CIDR``: as before IPAM existed, that address; inside the allocation range it is claimed
  through IPAM too, so it can never be handed to another container. Outside it (or IPv6) it
  is used as given.

Everything is keyed by the container's identity (its network namespace), so attaching again
returns the same addresses.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network

from meshnet.errors import UserError
from meshnet.ipam.allocator import AddressInUse
from meshnet.ipam.service import IpamService


@dataclass(frozen=True)
class AddressSpec:
    kind: str  # "allocate" | "claim" | "static"
    subnet: IPv4Network | None = None
    address: IPv4Interface | None = None
    text: str = ""


def parse_spec(text: str) -> AddressSpec:
    """One of the user's address arguments; UserError (one line) if it is malformed."""
    text = text.strip()
    if text.startswith("net:"):
        value = text[4:]
        try:
            subnet = IPv4Network(value)
        except ValueError as e:
            raise UserError(f"bad subnet {value!r} in {text!r}: {e}") from None
        return AddressSpec("allocate", subnet=subnet, text=text)
    if text.startswith("ip:"):
        value = text[3:]
        try:
            address = IPv4Interface(value if "/" in value else f"{value}/32")
        except ValueError as e:
            raise UserError(f"bad address {value!r} in {text!r}: {e}") from None
        return AddressSpec("claim", address=address, text=text)
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
        return AddressSpec("claim", address=iface, text=text)
    return AddressSpec("static", text=text)


async def addresses_for(ipam: IpamService, container_id: str, specs: list[str]) -> list[str]:
    """The CIDRs to put on the container, allocating or claiming them through IPAM."""
    parsed = [parse_spec(s) for s in specs] or [AddressSpec("allocate")]
    out: list[str] = []
    for spec in parsed:
        if spec.kind == "allocate":
            out.append(str(await ipam.allocate(container_id, spec.subnet)))
        elif spec.kind == "claim":
            assert spec.address is not None
            if not ipam.in_range(spec.address.ip):
                if spec.text.startswith("ip:"):
                    raise UserError(
                        f"{spec.address.ip} is outside the allocation range "
                        f"{ipam.config.range}: give it as a CIDR to use it without IPAM"
                    )
                out.append(spec.text)
                continue
            try:
                out.append(str(await ipam.claim(container_id, spec.address)))
            except AddressInUse as e:
                raise UserError(f"address {spec.address.ip} is already in use: {e}") from None
        else:
            out.append(spec.text)
    return out


def is_ipv4(cidr: str) -> bool:
    try:
        IPv4Interface(cidr)
    except ValueError:
        return False
    return True


def release_only(addresses: list[str]) -> list[ipaddress.IPv4Address] | None:
    """What a detach of these CIDRs gives back to IPAM: their IPv4 addresses (IPAM holds no
    others), or None, everything, when none were named."""
    return [IPv4Interface(a).ip for a in addresses if is_ipv4(a)] if addresses else None
