"""`meshnet tui` and `meshnet lab tui`: the live view of a running router."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from meshnet.cli.common import api_socket_option
from meshnet.errors import UserError


def run_tui(socket_path: Path, interval: float) -> None:
    # Imported here: textual is slow to import, and only this command needs it.
    from meshnet.tui.app import MeshnetTui
    from meshnet.tui.source import ApiSource

    if interval <= 0:
        raise click.BadParameter("must be positive", param_hint="--interval")
    MeshnetTui(ApiSource(socket_path, interval)).run()


INTERVAL_OPTION = click.option(
    "--interval", type=float, default=1.0, show_default=True, help="Seconds between updates."
)


@click.command()
@functools.partial(api_socket_option, names=("--socket", "--api-socket"))
@INTERVAL_OPTION
def tui(api_socket: Path, interval: float) -> None:
    """The live view: peers, traffic with sparklines, events, IPAM and DNS (`?` for help)."""
    run_tui(api_socket, interval)


@click.command("tui")
@click.argument("host", required=False)
@click.option(
    "--name", "name", metavar="LAB", default=None, help="Which lab (default: the only one)."
)
@INTERVAL_OPTION
def lab_tui(host: str | None, name: str | None, interval: float) -> None:
    """Open `meshnet tui` on a lab host's router (default: the first host)."""
    # Imported here: the lab pulls in pyroute2, which other commands' start-up must not pay for.
    from meshnet.lab import lab as lablib

    status = lablib.status(name)
    hosts = status["hosts"]
    if not hosts:
        raise UserError(f"lab {status['name']} has no hosts")
    chosen = hosts[0] if host is None else next((h for h in hosts if h["name"] == host), None)
    if chosen is None:
        known = ", ".join(h["name"] for h in hosts)
        raise UserError(f"lab {status['name']} has no host {host!r} (hosts: {known})")
    run_tui(Path(chosen["api_socket"]), interval)
