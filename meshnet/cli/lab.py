"""`meshnet lab ...`: the command-line face of meshnet.lab.

Each command imports ``meshnet.lab.lab`` when it runs: it pulls in pyroute2 and the Docker
integration, which the start-up of every other command must not pay for.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from meshnet.cli.output import console
from meshnet.lab import topology as topo

NAME_OPTION = click.option(
    "--name",
    "name",
    metavar="LAB",
    default=None,
    help="Which lab (default: the only one running).",
)


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C (its default would end the process mid-build, leaving the
    rest to a later `down`); 143 is what a shell reports for a process SIGTERM ended."""

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


@click.group()
def lab() -> None:
    """Simulated hosts in network namespaces, to try meshnet on one machine."""


@lab.command()
@click.option(
    "--name",
    "name",
    metavar="LAB",
    default="demo",
    show_default=True,
    help="Name of the new lab; prefixes everything it creates.",
)
@click.option(
    "--hosts",
    type=int,
    default=3,
    show_default=True,
    help="Number of hosts (with a built-in topology).",
)
@click.option(
    "--topology",
    "shape",
    default="full",
    show_default=True,
    metavar="SHAPE|FILE",
    help="full, line, star, ring, or a topology file (.toml).",
)
@click.option(
    "--containers",
    type=int,
    default=None,
    help="Containers per host  [default: 1; a topology file may say otherwise]",
)
@click.option("--mtu", type=int, default=1500, show_default=True, help="Underlay MTU.")
@click.option(
    "--underlay",
    type=click.Choice(["ipv4", "ipv6", "dual"]),
    default=None,
    help="The underlay links' family  [default: ipv4; a topology file may say otherwise]",
)
@click.option(
    "--overlay",
    type=click.Choice(topo.OVERLAYS),
    default=None,
    help="The containers' overlay addresses: IPv4, IPv6 or both  [default: dual; ipv4 with "
    "--docker, --no-daemons or an --mtu that leaves the overlay less than IPv6's 1280 bytes]",
)
@click.option(
    "--password",
    envvar="MESHNET_PASSWORD",
    default=None,
    help="Start every router with this password (env MESHNET_PASSWORD).",
)
@click.option("--no-daemons", is_flag=True, help="Build the hosts but start no routers.")
@click.option("--no-fastdp", is_flag=True, help="Start every router with --no-fastdp.")
@click.option(
    "--docker",
    is_flag=True,
    help="Run a dockerd in every host; the containers are Docker containers.",
)
@click.option(
    "--dns-upstream",
    "dns_upstreams",
    multiple=True,
    metavar="IP[:PORT]",
    help="Every router's server for names outside its domain  [default: the machine's]",
)
def up(
    name: str,
    hosts: int,
    shape: str,
    containers: int | None,
    mtu: int,
    underlay: str | None,
    overlay: str | None,
    password: str | None,
    no_daemons: bool,
    no_fastdp: bool,
    docker: bool,
    dns_upstreams: tuple[str, ...],
) -> None:
    """Build a lab: one namespace per host, the underlay, and containers.

    In a `line`, h1 reaches h2 and h2 reaches h3, but h1 cannot reach h3 at all.
    """
    from meshnet.lab import lab as lablib  # imported here: see the module's docstring

    _exit_on_sigterm()  # so that `up` removes what it built, as on Ctrl-C
    lablib.check_can_create(name, mtu)
    if shape in topo.BUILTIN_TOPOLOGIES or not (shape.endswith(".toml") or os.path.exists(shape)):
        spec = topo.builtin(
            shape, hosts, 1 if containers is None else containers, underlay or "ipv4"
        )
    else:
        spec = topo.load_file(Path(shape), containers, underlay)
    steps = len(spec.hosts) + len(spec.links) + sum(len(h.containers) for h in spec.hosts)
    containers_total = sum(len(h.containers) for h in spec.hosts)
    # Routers, "finding each other", attachments, and the containers' resolv.conf.
    steps += 0 if no_daemons else len(spec.hosts) + 1 + containers_total + bool(containers_total)
    steps += len(spec.hosts) if docker else 0  # a dockerd per host (the image replaces DNS)
    natted = sum(h.nat is not None for h in spec.hosts)
    steps += 1 + natted if natted else 0  # the internet router and a NAT router per NATed host
    err = console(stderr=True)
    with Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(f"building lab {name}", total=steps)

        def step(what: str) -> None:
            progress.update(task, description=f"lab {name}: {what}", advance=1)

        lablib.up(
            name,
            spec,
            mtu=mtu,
            daemons=not no_daemons,
            password=password,
            dns_upstreams=dns_upstreams,
            fastdp=not no_fastdp,
            docker=docker,
            overlay=overlay or lablib.default_overlay(mtu, docker=docker, daemons=not no_daemons),
            progress=step,
        )
    _print_summary(lablib.status(name))


def _print_summary(state: dict[str, Any]) -> None:
    out = console()
    hosts = Table(title=f"lab {state['name']} ({state['state']}, underlay MTU {state['mtu']})")
    for column in ("host", "namespace", "underlay", "router", "containers"):
        hosts.add_column(column)
    for h in state["hosts"]:
        router = h["router"]
        if router is None:
            router_text = "not running"
        else:
            established = router["connections"].get("established", 0)
            router_text = f"{router['name']}\n{router['peers']} peers, {established} conn" + (
                ", encrypted" if router["encryption"] else ""
            )
        hosts.add_row(
            h["name"] + ("" if h["running"] else " (gone)"),
            h["namespace"],
            "\n".join(f"{u['address']} → {u['peer']}" for u in h["underlay"]) or "-",
            router_text,
            ", ".join(h["containers"]) or "-",
        )
    out.print(hosts)
    if state.get("nats"):
        nats = Table(title="NATs (behind each, a host; beyond them, the internet router)")
        for column in ("host", "kind", "private address", "NAT router", "public address"):
            nats.add_column(column)
        for nat in state["nats"]:
            nats.add_row(
                nat["host"],
                nat["kind"],
                f"{nat['host_address']} (gateway {nat['gateway']})",
                nat["namespace"] + ("" if nat["running"] else " (gone)"),
                nat["public_address"],
            )
        out.print(nats)
    if state["containers"]:
        table = Table()
        for column in ("container", "host", "namespace", "interface", "addresses", "mac"):
            table.add_column(column)
        for c in state["containers"]:
            table.add_row(
                c["name"],
                c["host"],
                c["namespace"],
                c["interface"],
                "\n".join(c["addresses"]),
                c["mac"] or "-",
            )
        out.print(table)
    degraded = [link for link in state["links"] if not link["up"] or link["loss"] or link["rate"]]
    for link in degraded:
        out.print(
            f"link {link['a']}-{link['b']}: "
            + (
                "down"
                if not link["up"]
                else ", ".join(
                    x
                    for x in (
                        f"loss {link['loss']:g}%" if link["loss"] else "",
                        f"rate {link['rate']}" if link["rate"] else "",
                    )
                    if x
                )
            )
        )


@lab.command()
@NAME_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(name: str | None, as_json: bool) -> None:
    """Show a lab's hosts, underlay addresses, containers and links."""
    from meshnet.lab import lab as lablib  # imported here: see the module's docstring

    state = lablib.status(name)
    if as_json:
        click.echo(json.dumps(state, indent=2))
    else:
        _print_summary(state)


@lab.command(context_settings={"ignore_unknown_options": True})
@NAME_OPTION
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec(name: str | None, target: str, command: tuple[str, ...]) -> None:
    """Run COMMAND in a host or container: meshnet lab exec h1 -- ping 172.31.0.2

    The command's exit status is meshnet's exit status.
    """
    from meshnet.lab import lab as lablib  # imported here: see the module's docstring

    argv, env = lablib.exec_argv(name, target, command)  # `docker exec` in a Docker lab
    sys.stdout.flush()
    try:
        os.execvpe(argv[0], argv, {**os.environ, **env})
    except FileNotFoundError:
        raise click.ClickException(f"`{argv[0]}` not found") from None


@lab.command()
@NAME_OPTION
@click.argument("a")
@click.argument("b")
@click.argument("action", type=click.Choice(["down", "up", "loss", "rate"]))
@click.argument("value", required=False)
def link(name: str | None, a: str, b: str, action: str, value: str | None) -> None:
    """Change the underlay link between hosts A and B, in both directions.

    \b
    meshnet lab link h1 h2 down
    meshnet lab link h1 h2 up
    meshnet lab link h1 h2 loss 20       (percent, 0 clears)
    meshnet lab link h1 h2 rate 10mbit   (none clears)
    """
    from meshnet.lab import lab as lablib  # imported here: see the module's docstring

    click.echo(lablib.set_link(name, a, b, action, value))


@lab.command()
@NAME_OPTION
def down(name: str | None) -> None:
    """Remove every namespace, link, process and file the lab made."""
    from meshnet.lab import lab as lablib  # imported here: see the module's docstring

    _exit_on_sigterm()
    removed = lablib.down(name)
    click.echo(f"lab {removed} removed")
