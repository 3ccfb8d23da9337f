"""The DNS flags of `meshnet launch`, kept here so the launch command only wires them in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from meshnet.dns.settings import (
    DEFAULT_DOMAIN,
    DEFAULT_PORT,
    DEFAULT_TTL,
    DEFAULT_UPSTREAM_TIMEOUT,
    DnsSettings,
)

_OPTIONS = [
    click.option(
        "--dns-domain",
        default=DEFAULT_DOMAIN,
        show_default=True,
        metavar="DOMAIN",
        help="The domain containers' names live in.",
    ),
    click.option(
        "--dns-ttl",
        type=click.IntRange(0, 0x7FFFFFFF),
        default=DEFAULT_TTL,
        show_default=True,
        metavar="SECONDS",
        help="TTL of the answers for container names.",
    ),
    click.option(
        "--dns-upstream",
        "dns_upstreams",
        multiple=True,
        metavar="IP[:PORT]",
        help="Server for names outside the domain (repeatable)  [default: the host's resolv.conf]",
    ),
    click.option(
        "--dns-address",
        default=None,
        metavar="CIDR",
        help="The DNS server's overlay address on the bridge, e.g. 10.32.1.250/12 "
        "[default: one from IPAM]",
    ),
    click.option(
        "--dns-port",
        type=click.IntRange(1, 65535),
        default=DEFAULT_PORT,
        show_default=True,
        help="The DNS server's UDP and TCP port.",
    ),
    click.option(
        "--dns-upstream-timeout",
        type=click.FloatRange(0.1, 60),
        default=DEFAULT_UPSTREAM_TIMEOUT,
        show_default=True,
        metavar="SECONDS",
        help="How long upstream servers may take before the client gets SERVFAIL.",
    ),
]


def dns_launch_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Adds the options; the command receives them as ``dns_*`` keyword arguments."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def dns_settings(options: dict[str, Any]) -> DnsSettings:
    """The settings from the ``dns_*`` keyword arguments of the options above."""
    return DnsSettings(
        domain=options["dns_domain"],
        ttl=options["dns_ttl"],
        upstreams=tuple(options["dns_upstreams"]),
        address=options["dns_address"],
        port=options["dns_port"],
        upstream_timeout=options["dns_upstream_timeout"],
    )


def dns_launch_args(settings: DnsSettings) -> list[str]:
    """The same settings as command-line arguments (for a background `launch --foreground`)."""
    args = [
        "--dns-domain",
        settings.domain,
        "--dns-ttl",
        str(settings.ttl),
        "--dns-port",
        str(settings.port),
        "--dns-upstream-timeout",
        str(settings.upstream_timeout),
    ]
    for upstream in settings.upstreams:
        args += ["--dns-upstream", upstream]
    if settings.address is not None:
        args += ["--dns-address", settings.address]
    return args
