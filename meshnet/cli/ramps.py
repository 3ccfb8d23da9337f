"""`meshnet expose | hide` and `meshnet status ramps`: the host on the overlay, and isolation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from meshnet.api.client import ApiClient
from meshnet.cli.common import api_socket_option, status_command
from meshnet.constants import ALLOCATE_TIMEOUT
from meshnet.node.specs import parse_exposure

_SPECS = "[CIDR | net:CIDR | net:default | net:default6]..."


@click.command()
@click.argument("addresses", nargs=-1, metavar=_SPECS)
@click.option("--hostname", "name", default=None, metavar="FQDN", help="Name it in DNS.")
@click.option(
    "--without-masquerade",
    is_flag=True,
    help="Containers' traffic leaves the overlay with their own addresses, not the host's.",
)
@api_socket_option
def expose(
    addresses: tuple[str, ...], name: str | None, without_masquerade: bool, api_socket: Path
) -> None:
    """Give this host an address on the overlay, in the default subnet unless told otherwise.

    Without arguments: the default subnet, and the default IPv6 subnet when the IPv6 ring is
    on (as attach). The host then reaches that subnet's containers, and they reach the world
    through it (masqueraded). A CIDR (IPv4 or IPv6) is used as given; net:CIDR gets one from
    IPAM. Prints the addresses. Exposing again changes nothing but the masquerading.
    """
    for address in addresses:
        parse_exposure(address)  # a mistake is one line before anything is asked
    result = ApiClient(api_socket, timeout=ALLOCATE_TIMEOUT + 15).post(
        "/expose",
        {"addresses": list(addresses), "name": name, "masquerade": not without_masquerade},
    )
    click.echo(" ".join(e["address"] for e in result["exposed"]))


@click.command()
@click.argument("addresses", nargs=-1, metavar=_SPECS)
@api_socket_option
def hide(addresses: tuple[str, ...], api_socket: Path) -> None:
    """Take the host's exposed addresses off the overlay (all of them, unless given)."""
    for address in addresses:
        parse_exposure(address)
    result = ApiClient(api_socket).post("/hide", {"addresses": list(addresses)})
    for e in result["hidden"]:
        click.echo(e["address"])


def _exposed(data: dict[str, Any]) -> str:
    shown = []
    for e in data["exposed"]:
        notes = [*e["names"], *([] if e["masquerade"] else ["without masquerade"])]
        shown.append(e["address"] + (f" ({', '.join(notes)})" if notes else ""))
    return ", ".join(shown) or "no"


def _isolation(data: dict[str, Any]) -> str:
    isolation = data["isolation"]
    if isolation["state"] != "on":
        return str(isolation["state"])
    subnets = isolation["subnets"]
    return (
        f"on ({isolation['ports']} container ports"
        + (f"; subnets {', '.join(subnets)}" if subnets else "")
        + ")"
    )


def status_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    """The lines `meshnet status` adds for what the host exposes and isolation."""
    if "exposed" not in data or "isolation" not in data:
        return []
    return [("Exposed", _exposed(data)), ("Isolation", _isolation(data))]


def ramps_table(data: dict[str, Any]) -> Table:
    table = Table(
        "port",
        "container",
        "addresses (allowed sources)",
        box=None,
        title=f"exposed: {_exposed(data)}; isolation {_isolation(data)}",
    )
    for p in data["ports"]:
        table.add_row(p["port"], f"{p['namespace']} ({p['ifname']})", " ".join(p["addresses"]))
    dropped = ", ".join(f"{k} {v}" for k, v in data["dropped"].items() if v)
    table.caption = (
        f"dropped: {dropped or 'none'}; traffic into the overlay to local containers: "
        + ("masqueraded" if data["masquerade_local"] else "keeps its source (--no-masq-local)")
    )
    return table


status_ramps = status_command(
    "/status/ramps",
    ramps_table,
    "Exposed addresses, masquerading, and isolation per container port.",
)
