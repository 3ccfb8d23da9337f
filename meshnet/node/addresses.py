"""What attach asks of IPAM: turn the user's address specs (see specs.py) into addresses for the
kernel, keyed by the container's identity (its network namespace), so attaching again returns the
same addresses; and which addresses a detach of such specs takes off."""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Network, IPv6Interface, IPv6Network

from meshnet.constants import IPV6_MIN_MTU
from meshnet.errors import UserError
from meshnet.ipam.allocator import AddressInUse, Interface, IPAddress
from meshnet.ipam.service import IpamService
from meshnet.node.specs import SpecKind, default_specs, parse_spec


async def addresses_for(
    ipam: IpamService, container_id: str, specs: list[str], *, mtu: int | None = None
) -> list[str]:
    """The CIDRs to put on the container, allocating or claiming them through IPAM.

    No specs: one IPv4 address, and one IPv6 address when the IPv6 ring is on — but for a
    container that holds addresses already, only of the families it has: attaching again
    changes nothing (an IPv4-only or IPv6-only container stays so). ``mtu``: the container
    link's; below IPv6's minimum (the kernel turns IPv6 off on such a link) no IPv6 address
    is given by default, and one asked for is refused in one line."""
    parsed = [parse_spec(s) for s in specs]
    ipv6_fits = mtu is None or mtu >= IPV6_MIN_MTU
    if not parsed:
        parsed = default_specs(ipam.ipv6 is not None and ipv6_fits)
        families = {a.version for a in ipam.addresses_of(container_id)}
        if families:
            parsed = [spec for spec in parsed if spec.family in families]
    elif not ipv6_fits and any(spec.family == 6 for spec in parsed):
        raise UserError(
            f"no IPv6 on this router's overlay: its MTU is {mtu} and IPv6 needs "
            f"{IPV6_MIN_MTU} (a larger underlay MTU, or --mtu, gives it room)"
        )
    out: list[str] = []
    for spec in parsed:
        if spec.kind is SpecKind.ALLOCATE:
            if spec.family == 6:
                assert spec.subnet is None or isinstance(spec.subnet, IPv6Network)
                out.append(str(await ipam.allocate6(container_id, spec.subnet)))
            else:
                assert spec.subnet is None or isinstance(spec.subnet, IPv4Network)
                out.append(str(await ipam.allocate(container_id, spec.subnet)))
            continue
        assert spec.address is not None
        if not ipam.in_range(spec.address.ip):
            if spec.exact:
                raise UserError(
                    f"{spec.address.ip} is outside the allocation range "
                    f"{_range_of(ipam, spec.address)}: give it as a CIDR to use it without IPAM"
                )
            out.append(spec.text)
            continue
        try:
            out.append(str(await ipam.claim(container_id, spec.address)))
        except AddressInUse as e:
            raise UserError(f"address {spec.address.ip} is already in use: {e}") from None
    return out


def _range_of(ipam: IpamService, address: Interface) -> str:
    if isinstance(address, IPv6Interface):
        if ipam.allocator6 is not None:
            return str(ipam.allocator6.config.range)
        return "of IPv6" if ipam.ipv6 is None else "(IPv6: fd00::/8 until the ring exists)"
    return str(ipam.config.range)


def detach_addresses(
    specs: list[str],
    held: list[Interface],
    default_subnet: IPv4Network | None,
    default_subnet6: IPv6Network | None = None,
) -> list[str]:
    """The CIDRs a detach of these specs takes off: the address of a CIDR or ``ip:ADDR``, and
    every address the container holds (``held``, as IPAM knows them) in a ``net:`` subnet.

    UserError for a subnet it has none in: detaching nothing there must not become detaching
    everything (which is what no address at all means). ``default_subnet``: None without IPAM
    (``default_subnet6``: without the IPv6 ring).
    """
    out: list[str] = []
    for spec in map(parse_spec, specs):
        if spec.kind is SpecKind.ALLOCATE:
            default = default_subnet6 if spec.family == 6 else default_subnet
            subnet = spec.subnet or default
            if subnet is None:
                raise UserError(f"{spec.text}: no IPAM here to know the container's addresses")
            found = [str(a) for a in held if a.ip in subnet]
            if not found:
                raise UserError(f"{spec.text}: the container has no address in {subnet}")
            out += [a for a in found if a not in out]
        else:
            assert spec.address is not None
            out.append(str(spec.address))
    return out


def release_only(addresses: list[str]) -> list[IPAddress] | None:
    """What a detach of these CIDRs gives back to IPAM: their addresses, or None, everything,
    when none were named."""
    if not addresses:
        return None
    out: list[IPAddress] = []
    for text in addresses:
        try:
            out.append(ipaddress.ip_interface(text).ip)
        except ValueError:
            continue
    return out
