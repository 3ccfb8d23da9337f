"""`meshnet attach | detach | ps`: containers on the overlay."""

from __future__ import annotations

import json
from pathlib import Path

import click

from meshnet.api.client import ApiClient
from meshnet.cli.common import JSON_OPTION, api_socket_option
from meshnet.constants import ALLOCATE_TIMEOUT, CONTAINER_IFNAME
from meshnet.errors import UserError
from meshnet.node.specs import looks_like_spec, parse_spec


def _split_container_args(args: tuple[str, ...]) -> tuple[list[str], str]:
    """`[ADDRESS...] CONTAINER`, for attach and detach alike: every argument but the last is an
    address spec (see ``meshnet.node.specs``), checked here so a mistake is one line before the
    router is asked anything."""
    if not args:
        raise click.UsageError("missing CONTAINER")
    *addresses, container = args
    if looks_like_spec(container):
        raise click.UsageError(f"missing CONTAINER after the address {container}")
    for address in addresses:
        parse_spec(address)
    return addresses, container


@click.command()
@click.argument("args", nargs=-1, metavar="[ADDRESS...] CONTAINER")
@click.option(
    "--ifname", default=CONTAINER_IFNAME, show_default=True, help="Interface name inside."
)
@click.option("--name", default=None, help="DNS name to register  [default: the namespace's name]")
@click.option(
    "--ipv6-only",
    is_flag=True,
    help="Only an IPv6 address from IPAM (no IPv4 one): the same as the address net:default6.",
)
@api_socket_option
def attach(
    args: tuple[str, ...], ifname: str, name: str | None, ipv6_only: bool, api_socket: Path
) -> None:
    """Join a container to the overlay: a namespace name, a PID, /proc/PID/ns/net, or a Docker
    container's name or id.

    Without ADDRESS, IPAM gives it one address in the default subnet and, unless the router
    runs with --no-ipv6, one in the default IPv6 subnet. An ADDRESS is `net:CIDR` (one from that
    subnet, IPv4 or IPv6), `net:default` or `net:default6` (one from the default subnet of that
    family), `ip:ADDR[/LEN]` (exactly that one) or a CIDR; attaching again gives the same
    addresses.
    """
    addresses, container = _split_container_args(args)
    if ipv6_only:
        if addresses:
            raise click.UsageError("--ipv6-only takes no ADDRESS (give IPv6 ones instead)")
        addresses = ["net:default6"]
    # Allocation may wait for the peers to agree on the ring, or for a donation.
    result = ApiClient(api_socket, timeout=ALLOCATE_TIMEOUT + 15).post(
        "/attach",
        {"container": container, "addresses": addresses, "ifname": ifname, "name": name},
    )
    click.echo(" ".join(a.split("/")[0] for a in result["addresses"]))


@click.command()
@click.argument("args", nargs=-1, metavar="[ADDRESS...] CONTAINER")
@click.option(
    "--ifname", default=CONTAINER_IFNAME, show_default=True, help="Interface name inside."
)
@api_socket_option
def detach(args: tuple[str, ...], ifname: str, api_socket: Path) -> None:
    """Remove a container from the overlay (or only the given addresses); CONTAINER as for
    attach.

    An ADDRESS is as for attach: a CIDR or `ip:ADDR` takes that address off, `net:CIDR` (or
    `net:default`) every address the container has in that subnet.
    """
    addresses, container = _split_container_args(args)
    result = ApiClient(api_socket).post(
        "/detach", {"container": container, "addresses": addresses, "ifname": ifname}
    )
    if not result["detached"]:
        raise UserError(f"{container} is not attached")


@click.command()
@api_socket_option
@JSON_OPTION
def ps(api_socket: Path, as_json: bool) -> None:
    """Containers attached on this host, with MAC and addresses."""
    containers = ApiClient(api_socket).get("/containers")
    if as_json:
        click.echo(json.dumps(containers, indent=2))
        return
    if not containers:
        click.echo("no container is attached on this host")
    for c in containers:
        click.echo(f"{c['namespace']} {c['mac']} {' '.join(c['addresses'])}")
