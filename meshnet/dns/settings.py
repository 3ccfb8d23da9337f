"""The DNS server's settings and the small pure rules around them (names, upstreams, resolv.conf).

``DnsSettings`` is one field of ``meshnet.config.Config``; everything here is pure, so the rules
that decide which names are registered and which servers are asked are unit-tested directly.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from meshnet.dns.records import normalize_name
from meshnet.errors import UserError

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

DEFAULT_DOMAIN = "meshnet.local."
DEFAULT_TTL = 30
DEFAULT_PORT = 53
#: How long a forwarded query may take, across every upstream server, before SERVFAIL.
DEFAULT_UPSTREAM_TIMEOUT = 2.0


@dataclass(frozen=True)
class DnsSettings:
    """``addresses``: the server's CIDRs on the bridge, at most one per family (empty: ask IPAM
    for an IPv4 one). The node may add more while it runs (``DnsService.listen_on``).

    ``upstreams``: "IP" or "IP:PORT" ("[IPv6]:PORT"); empty means the host's resolv.conf.
    """

    domain: str = DEFAULT_DOMAIN
    ttl: int = DEFAULT_TTL
    upstreams: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    port: int = DEFAULT_PORT
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT

    def __post_init__(self) -> None:
        object.__setattr__(self, "domain", check_domain(self.domain))
        if not 0 <= self.ttl <= 0x7FFFFFFF:
            raise UserError(f"bad DNS TTL {self.ttl}: 0 to 2147483647 seconds")
        for upstream in self.upstreams:
            parse_upstream(upstream)
        check_listen_addresses(self.addresses)
        if not 1 <= self.port <= 65535:
            raise UserError(f"bad DNS port {self.port}")
        if not 0 < self.upstream_timeout <= 60:
            raise UserError(f"bad upstream timeout {self.upstream_timeout}: 0 to 60 seconds")


def check_domain(domain: str) -> str:
    try:
        return normalize_name(domain)
    except ValueError:
        raise UserError(f"bad DNS domain {domain!r}") from None


def check_listen_address(cidr: str) -> Interface:
    """A CIDR with a prefix length (the overlay's, so that the host can answer containers)."""
    if "/" not in cidr:
        raise UserError(f"bad DNS address {cidr!r}: give the overlay prefix, e.g. {cidr}/12")
    try:
        iface = ipaddress.ip_interface(cidr)
    except ValueError:
        raise UserError(
            f"bad DNS address {cidr!r}: expected CIDR such as 10.32.1.250/12 or fd00::53/64"
        ) from None
    if iface.network.num_addresses == 1:
        raise UserError(f"bad DNS address {cidr!r}: a host prefix leaves no route to containers")
    return iface


def check_listen_addresses(cidrs: tuple[str, ...]) -> list[Interface]:
    """Every given listen address (``check_listen_address``), at most one per family."""
    found = [check_listen_address(c) for c in cidrs]
    for version in (4, 6):
        same = [str(i) for i in found if i.version == version]
        if len(same) > 1:
            raise UserError(f"more than one IPv{version} DNS address: {', '.join(same)}")
    return found


def parse_upstream(text: str, default_port: int = 53) -> tuple[str, int]:
    """'10.0.0.2', '10.0.0.2:5353', 'fd00::1' or '[fd00::1]:5353' -> (address, port)."""
    host, port = text.strip(), default_port
    if host.startswith("["):
        inside, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise UserError(f"bad DNS upstream {text!r}: use IP, IP:PORT or [IPv6]:PORT")
        host = inside
        if rest:
            port = _port(rest[1:], text)
    elif host.count(":") == 1:
        host, _, port_text = host.partition(":")
        port = _port(port_text, text)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise UserError(f"bad DNS upstream {text!r}: use IP, IP:PORT or [IPv6]:PORT") from None


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UserError(f"bad DNS upstream {whole!r}: the port must be 1-65535")
    return int(text)


def qualify(name: str, domain: str) -> str:
    """The FQDN a container name stands for: ``web`` -> ``web.meshnet.local.``.

    A name ending with a dot is taken as it is; one already ending with the domain gets only
    its dot. UserError if the result is not a valid DNS name.
    """
    text = name.strip().lower()
    if not text:
        raise UserError("empty DNS name")
    domain = check_domain(domain)
    if text.endswith("."):
        fqdn = text
    elif text + "." == domain or (text + ".").endswith("." + domain):
        fqdn = text + "."
    else:
        fqdn = f"{text}.{domain}"
    try:
        return normalize_name(fqdn)
    except ValueError:
        raise UserError(f"bad DNS name {name!r}") from None


def parse_resolv_conf(text: str) -> list[str]:
    """The nameserver addresses of a resolv.conf, in order (resolv.conf(5): at most three).

    Unparseable lines are skipped, as the C library skips them; IPv6 zone ids are kept.
    """
    found: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        address = fields[1]
        try:
            ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            continue
        if address not in found:
            found.append(address)
    return found[:3]


def render_resolv_conf(nameservers: Sequence[str], domain: str) -> str:
    """What a container's resolv.conf says: our server's addresses (IPv4 and IPv6: the C
    library tries them in order, so a single-stack container reaches one), and the domain as
    search list."""
    if isinstance(nameservers, str) or not 1 <= len(nameservers) <= 3:
        raise ValueError(f"one to three nameservers (resolv.conf(5)), not {nameservers!r}")
    search = check_domain(domain).rstrip(".")
    return (
        "# written by meshnet: this host's DNS server for the overlay\n"
        + "".join(f"nameserver {ipaddress.ip_address(n)}\n" for n in nameservers)
        + f"search {search}\n"
        "options ndots:1\n"
    )
