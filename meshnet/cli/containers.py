"""`meshnet attach | detach | ps`: containers on the overlay."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import click

from meshnet.api.client import ApiClient
from meshnet.cli.common import JSON_OPTION, api_socket_option
from meshnet.constants import ALLOCATE_TIMEOUT, CONTAINER_IFNAME
from meshnet.errors import UserError
from meshnet.node.specs import parse_spec


def _split_container_args(args: tuple[str, ...]) -> tuple[list[str], str]:
    """`[CIDR...] CONTAINER`: every argument but the last is an address."""
    if not args:
        raise click.UsageError("missing CONTAINER")
    *addresses, container = args
    for address in addresses:
        try:
            ipaddress.ip_interface(address)
        except ValueError:
            raise UserError(
                f"bad address {address!r}: expected CIDR such as 10.32.1.5/12"
            ) from None
        if "/" not in address:
            raise UserError(f"bad address {address!r}: give the prefix length, e.g. {address}/12")
    return addresses, container


@click.command()
@click.argument("args", nargs=-1, metavar="[ADDRESS...] CONTAINER")
@click.option(
    "--ifname", default=CONTAINER_IFNAME, show_default=True, help="Interface name inside."
)
@click.option("--name", default=None, help="DNS name to register  [default: the namespace's name]")
@api_socket_option
def attach(args: tuple[str, ...], ifname: str, name: str | None, api_socket: Path) -> None:
    """Join a container to the overlay: a namespace name, a PID, /proc/PID/ns/net, or a Docker
    container's name or id.

    Without ADDRESS, IPAM gives it one in the default subnet. An ADDRESS is `net:CIDR` (one
    from that subnet), `ip:ADDR[/LEN]` (exactly that one) or a CIDR; attaching again gives the
    same addresses.
    """
    if not args:
        raise click.UsageError("missing CONTAINER")
    *addresses, container = args
    for address in addresses:
        parse_spec(address)
    # Allocation may wait for the peers to agree on the ring, or for a donation.
    result = ApiClient(api_socket, timeout=ALLOCATE_TIMEOUT + 15).post(
        "/attach",
        {"container": container, "addresses": addresses, "ifname": ifname, "name": name},
    )
    click.echo(" ".join(a.split("/")[0] for a in result["addresses"]))


@click.command()
@click.argument("args", nargs=-1, metavar="[CIDR...] CONTAINER")
@click.option(
    "--ifname", default=CONTAINER_IFNAME, show_default=True, help="Interface name inside."
)
@api_socket_option
def detach(args: tuple[str, ...], ifname: str, api_socket: Path) -> None:
    """Remove a container from the overlay (or only the given addresses); CONTAINER as for
    attach."""
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
    for c in containers:
        click.echo(f"{c['namespace']} {c['mac']} {' '.join(c['addresses'])}")
