"""What attach asks of IPAM: turn the user's address specs (see specs.py) into addresses for the
kernel, keyed by the container's identity (its network namespace), so attaching again returns the
same addresses; and which addresses a detach of such specs takes off."""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Interface, IPv4Network

from meshnet.errors import UserError
from meshnet.ipam.allocator import AddressInUse
from meshnet.ipam.service import IpamService
from meshnet.node.specs import DEFAULT_SUBNET, SpecKind, parse_spec


async def addresses_for(ipam: IpamService, container_id: str, specs: list[str]) -> list[str]:
    """The CIDRs to put on the container, allocating or claiming them through IPAM."""
    parsed = [parse_spec(s) for s in specs] or [DEFAULT_SUBNET]
    out: list[str] = []
    for spec in parsed:
        if spec.kind is SpecKind.ALLOCATE:
            out.append(str(await ipam.allocate(container_id, spec.subnet)))
        elif spec.kind is SpecKind.CLAIM:
            assert spec.address is not None
            if not ipam.in_range(spec.address.ip):
                if spec.exact:
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


def detach_addresses(
    specs: list[str], held: list[IPv4Interface], default_subnet: IPv4Network | None
) -> list[str]:
    """The CIDRs a detach of these specs takes off: the address of a CIDR or ``ip:ADDR``, and
    every address the container holds (``held``, as IPAM knows them) in a ``net:`` subnet.

    UserError for a subnet it has none in: detaching nothing there must not become detaching
    everything (which is what no address at all means). ``default_subnet``: None without IPAM.
    """
    out: list[str] = []
    for spec in map(parse_spec, specs):
        if spec.kind is SpecKind.ALLOCATE:
            subnet = spec.subnet or default_subnet
            if subnet is None:
                raise UserError(f"{spec.text}: no IPAM here to know the container's addresses")
            found = [str(a) for a in held if a.ip in subnet]
            if not found:
                raise UserError(f"{spec.text}: the container has no address in {subnet}")
            out += [a for a in found if a not in out]
        elif spec.address is not None:
            out.append(str(spec.address))
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
