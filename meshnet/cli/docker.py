"""`meshnet run`, `meshnet dns-args` and `meshnet status docker`: Docker from the command line.

`meshnet run [ADDRESS...] -- DOCKER-RUN-ARGS` is `docker run -d` with the container's DNS
pointed at this host's meshnet server, its hostname in the meshnet domain (from `--name`), and
the ``meshnet.cidr`` label, then an attach by id (which registers its name). The label makes the
router attach it again whenever it restarts.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from meshnet.api.client import ApiClient
from meshnet.cli.common import api_socket_option, status_command
from meshnet.constants import ALLOCATE_TIMEOUT
from meshnet.errors import UserError
from meshnet.integrations.docker.runargs import run_arguments, split_run_args
from meshnet.integrations.docker.settings import default_docker_host
from meshnet.node.specs import parse_spec


def default_docker_cli() -> str:
    return os.environ.get("MESHNET_DOCKER_CLI") or "docker"


@click.command(
    "run",
    context_settings={"ignore_unknown_options": True, "help_option_names": ["--help"]},
)
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option(
    "--docker-host",
    default=default_docker_host,
    show_default="$DOCKER_HOST or unix:///var/run/docker.sock",
    metavar="URL",
    help="The Docker Engine to run the container on (the router's own, normally).",
)
@click.option(
    "--docker-cli",
    default=default_docker_cli,
    show_default="$MESHNET_DOCKER_CLI or docker",
    metavar="PATH",
    help="The docker client to run.",
)
@click.option("--without-dns", is_flag=True, help="Keep Docker's DNS settings.")
@api_socket_option
def run(
    args: tuple[str, ...],
    docker_host: str,
    docker_cli: str,
    without_dns: bool,
    api_socket: Path,
) -> None:
    """`docker run -d` a container on the overlay: meshnet run [ADDRESS...] -- DOCKER-RUN-ARGS

    ADDRESS is as for `attach` (none: one from IPAM). The container's DNS is this host's meshnet
    server, its hostname NAME.DOMAIN (from --name), and its name is registered. Prints the
    container's id.
    """
    specs, docker_args = split_run_args(args)
    for spec in specs:
        parse_spec(spec)
    if not docker_args:
        raise click.UsageError("missing the image (and docker run's other arguments) after --")
    client = ApiClient(api_socket, timeout=ALLOCATE_TIMEOUT + 15)
    dns = None if without_dns else _dns_status(client)
    argv, name = run_arguments(specs, docker_args, dns)
    command = [docker_cli, "-H", docker_host, "run", *argv]
    try:
        started = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    except FileNotFoundError:
        raise UserError(
            f"{docker_cli} not found: install Docker's client (or --docker-cli)"
        ) from None
    if started.returncode != 0:
        raise UserError(f"docker run failed (exit status {started.returncode})")
    container = started.stdout.strip().splitlines()[-1] if started.stdout.strip() else ""
    if not container:
        raise UserError("docker run printed no container id")
    try:
        client.post("/attach", {"container": container, "addresses": specs, "name": name})
    except UserError as e:
        raise UserError(f"container {container[:12]} started but not attached: {e}") from None
    click.echo(container)


def _dns_status(client: ApiClient) -> dict[str, Any] | None:
    status: dict[str, Any] = client.get("/status/dns")
    if not status.get("listen"):
        click.echo("meshnet: DNS is not serving yet: the container keeps Docker's DNS", err=True)
        return None
    return status


@click.command("dns-args")
@api_socket_option
def dns_args(api_socket: Path) -> None:
    """Print `docker run` options for meshnet's DNS: docker run $(meshnet dns-args) ..."""
    status: dict[str, Any] = ApiClient(api_socket).get("/status/dns")
    if not status.get("listen"):
        raise UserError(f"meshnet's DNS server is not serving ({status.get('state')})")
    address = str(status["listen"]).split("/")[0]
    click.echo(f"--dns={address} --dns-search={str(status['domain']).rstrip('.')}")


def _docker_table(data: dict[str, Any]) -> Table:
    table = Table("", "", box=None, show_header=False, title=f"Docker at {data['host']}")
    rows = [
        ("state", data["state"] + (f" (API {data['api_version']})" if data["api_version"] else "")),
        (
            "plugin",
            data["plugin"] + (f" on {data['plugin_socket']}" if data["plugin_socket"] else ""),
        ),
        ("events", str(data["events"])),
        ("attached", str(data["attached"])),
        ("forgotten", str(data["forgotten"])),
        (
            "errors",
            str(data["errors"]) + (f" (last: {data['last_error']})" if data["last_error"] else ""),
        ),
    ]
    if data["plugin_calls"]:
        calls = ", ".join(
            f"{k.split('.')[-1]} {v}" for k, v in sorted(data["plugin_calls"].items())
        )
        rows.append(("plugin calls", calls + f"; refused {data['plugin_errors']}"))
    for key, value in rows:
        table.add_row(key, value)
    return table


status_docker = status_command(
    "/status/docker", _docker_table, "Docker: connection, plugin, events, attached containers."
)
