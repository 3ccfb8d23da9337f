"""`meshnet dns-add | dns-remove | dns-lookup` and `meshnet status dns`: names in the mesh's DNS."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from meshnet.api.client import ApiClient
from meshnet.cli.common import api_socket_option, status_command
from meshnet.errors import UserError, bad_address


def _split(args: tuple[str, ...]) -> tuple[list[str], str | None]:
    """`[IP...] [CONTAINER]`: every argument but the last is an address; so is the last one if
    it is an IP address, and then the names are no container's (None)."""
    if not args:
        raise click.UsageError("missing IP or CONTAINER")
    *addresses, last = args
    container: str | None = last
    if _is_ip(last):
        addresses, container = [*addresses, last], None
    for address in addresses:
        if not _is_ip(address):
            raise bad_address(address, "not an IP address")
    return addresses, container


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_interface(text.strip())
    except ValueError:
        return False
    return True


@click.command("dns-add")
@click.argument("args", nargs=-1, metavar="[IP...] [CONTAINER]")
@click.option("--hostname", "name", required=True, metavar="FQDN", help="Name to add.")
@api_socket_option
def dns_add(args: tuple[str, ...], name: str, api_socket: Path) -> None:
    """Give a container a name (for its attached addresses, or only the IPs given).

    Without a CONTAINER the IPs may be any addresses (a host outside the overlay, say): the
    records are this router's own, shown as (external), and gossiped like the others.
    """
    addresses, container = _split(args)
    result = ApiClient(api_socket).post(
        "/dns/add", {"container": container, "addresses": addresses, "name": name}
    )
    click.echo(f"{result['name']} {' '.join(result['addresses'])}")


@click.command("dns-remove")
@click.argument("args", nargs=-1, metavar="[IP...] [CONTAINER]")
@click.option("--hostname", "name", default=None, metavar="FQDN", help="Only this name.")
@api_socket_option
def dns_remove(args: tuple[str, ...], name: str | None, api_socket: Path) -> None:
    """Remove a container's names (only for the IPs or the name given); without a CONTAINER,
    the names `dns-add` gave to the IPs."""
    addresses, container = _split(args)
    result = ApiClient(api_socket).post(
        "/dns/remove", {"container": container, "addresses": addresses, "name": name}
    )
    if not result["removed"]:
        whose = container if container is not None else " ".join(addresses)
        raise UserError(f"no DNS record of {whose} matched")


@click.command("dns-lookup")
@click.argument("name")
@api_socket_option
def dns_lookup(name: str, api_socket: Path) -> None:
    """Print the addresses of NAME (exit status 1 if it has none)."""
    result = ApiClient(api_socket).post("/dns/lookup", {"name": name})
    if not result["addresses"]:
        raise UserError(f"{result['name']} not found")
    for address in result["addresses"]:
        click.echo(address)


def _endpoint(cidr: str, port: int) -> str:
    ip = ipaddress.ip_interface(cidr).ip
    return f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}"


def _dns_table(data: dict[str, Any]) -> Table:
    cidrs = data.get("listen_addresses") or ([data["listen"]] if data["listen"] else [])
    listen = ", ".join(_endpoint(c, data["port"]) for c in cidrs) or data["state"]
    table = Table(
        "peer",
        "name",
        "address",
        "container",
        box=None,
        # Escaped: rich would take "[fd00::53]:53" for markup and print ":53".
        title=escape(
            f"domain {data['domain']}, TTL {data['ttl']}s, listening on {listen}, "
            f"upstream {', '.join(data['upstreams']) or 'none'}"
        ),
    )
    for entry in data["entries"]:
        peer = entry["nickname"] + (" (this peer)" if entry["local"] else "")
        for r in entry["records"]:
            table.add_row(peer, r["name"], r["address"], r["container"])
            peer = ""
    counters = {**(data["resolver"] or {}), **(data["server"] or {})}
    shown = {k: v for k, v in counters.items() if v}
    table.caption = "queries: " + (
        ", ".join(f"{k} {v}" for k, v in sorted(shown.items())) if shown else "none yet"
    )
    return table


status_dns = status_command(
    "/status/dns", _dns_table, "The DNS server: domain, upstreams, names per peer, counters."
)
