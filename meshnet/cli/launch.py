"""`meshnet launch | stop | connect | forget`: starting and stopping the router, and its peers."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from meshnet import logfile
from meshnet.api.client import ApiClient
from meshnet.cli.common import api_socket_option
from meshnet.cli.launch_options import (
    config_from_options,
    envvar,
    launch_options,
    launch_warnings,
    relaunch_args,
    relaunch_environment,
)
from meshnet.config import Config
from meshnet.errors import UserError
from meshnet.gossip.identity import PEER_NAME_FILE, format_peer_name, parse_peer_name
from meshnet.router_process import Launch, exec_router
from meshnet.statefile import write_atomically

READY_TIMEOUT = 60.0


def _read_password_file(path: Path) -> bytes:
    try:
        text = path.read_text().rstrip("\n")
    except OSError as e:
        raise UserError(f"cannot read password file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(
            f"password file {path} is not text: make one with"
            f" head -c 32 /dev/urandom | base64 > {path}"
        ) from None
    if not text:
        raise UserError(f"password file {path} is empty")
    return text.encode()


@click.command()
@click.argument("peers", nargs=-1, metavar="[PEER[:PORT]]...")
@click.option(
    "--foreground",
    is_flag=True,
    envvar=envvar("--foreground"),
    show_envvar=True,
    help="Run in the foreground (for systemd).",
)
@click.option(
    "--password-file",
    type=click.Path(path_type=Path),
    default=None,
    envvar=envvar("--password-file"),
    show_envvar=True,
    help="Read the password from a file.",
)
@click.option(
    "--name",
    "peer_name",
    default=None,
    metavar="aa:bb:cc:dd:ee:ff",
    envvar=envvar("--name"),
    show_envvar=True,
    help="This router's peer name, its identity in the mesh (as Weave's --name); kept in the "
    "state directory, so only a first launch may choose it (--nickname is the name shown)  "
    "[default: random on the first launch]",
)
@click.option(
    "--log-to-state-dir",
    is_flag=True,
    hidden=True,  # what a background launch runs its child with
    envvar=envvar("--log-to-state-dir"),
    help="With --foreground: log to STATE_DIR/meshnet.log (rotated), not stderr.",
)
@launch_options
def launch(
    peers: tuple[str, ...],
    foreground: bool,
    password_file: Path | None,
    peer_name: str | None,
    log_to_state_dir: bool,
    **options: Any,
) -> None:
    """Start the router and connect to PEERs.

    Returns once the router is ready and prints its peer name; `--foreground` runs it here.
    """
    password = _read_password_file(password_file) if password_file is not None else None
    config = config_from_options(peers, options, password=password)
    ctx = click.get_current_context()
    if _debugging(ctx) and ctx.get_parameter_source("log_level") is ParameterSource.DEFAULT:
        config = dataclasses.replace(config, log_level="debug")  # `meshnet --debug launch`
    on_command_line = ctx.get_parameter_source("password") is ParameterSource.COMMANDLINE
    # In a background launch, the child logs them too (its password is in its environment).
    for warning in launch_warnings(config, password_on_command_line=on_command_line):
        click.echo(f"warning: {warning}", err=True)
    client = _refuse_if_running(config)
    if not config.ipalloc_range_overlap_ok:
        _check_range_against_routes(config)
    if peer_name is not None:
        _keep_peer_name(config.state_dir, peer_name)
    if foreground:
        launch = Launch(config, log_to_state_dir, debug=_debugging(ctx))
        exec_router(launch)
    click.echo(_launch_background(config, client)["name"])


def _refuse_if_running(config: Config) -> ApiClient:
    """A client of the configured API socket, unless a router already answers there."""
    client = ApiClient(config.api_socket)
    if client.is_ready():
        status = client.get("/status")
        raise UserError(
            f"meshnet is already running as {status['name']} ({status['nickname']}) "
            f"on {config.api_socket}"
        )
    return client


def parse_foreground_launch(args: list[str], password: str | None) -> tuple[Launch, list[str]]:
    """What `meshnet launch --foreground ARGS` would exec, parsed here: the Launch and its
    warnings. The lab starts its routers from one process that imported the daemon once
    (meshnet.lab.spawner), not one CLI and one daemon start-up per host; the options mean the
    same as on the command line, environment included, except that ``password`` stands for
    MESHNET_PASSWORD whatever this process's environment holds. The route check is left to the
    router's own namespace (`netcheck.refuse_overlap`)."""
    ctx = launch.make_context("launch", ["--foreground", *args])
    options = dict(ctx.params)
    peers = options.pop("peers")
    password_file = options.pop("password_file")
    peer_name = options.pop("peer_name")
    log_to_state_dir = options.pop("log_to_state_dir")
    options.pop("foreground")
    options["password"] = password
    file_password = _read_password_file(password_file) if password_file is not None else None
    config = config_from_options(peers, options, password=file_password)
    if _debugging(ctx) and ctx.get_parameter_source("log_level") is ParameterSource.DEFAULT:
        config = dataclasses.replace(config, log_level="debug")
    _refuse_if_running(config)
    if peer_name is not None:
        _keep_peer_name(config.state_dir, peer_name)
    return Launch(config, log_to_state_dir, debug=_debugging(ctx)), launch_warnings(config)


def _check_range_against_routes(config: Config) -> None:
    """Weave's netcheck: refuse a range the host already routes elsewhere, naming the route."""
    # Imported here: netlink pulls in pyroute2, which only `launch` needs.
    from meshnet.ipam import netcheck

    netcheck.refuse_overlap(config.ipalloc_range)


def _debugging(ctx: click.Context) -> bool:
    """`meshnet --debug` (or MESHNET_DEBUG): the router logs at debug level too."""
    return bool(ctx.find_root().params.get("debug") or os.environ.get("MESHNET_DEBUG"))


def _keep_peer_name(state_dir: Path, text: str) -> None:
    """`--name`: the router loads its peer name from the state directory (and creates one there
    on its first launch), so the name given is written there first, or must be the one there:
    IPAM's ring and the peers know this host by it, and it cannot change under them."""
    name = parse_peer_name(text)
    path = state_dir / PEER_NAME_FILE
    try:
        kept = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        try:
            write_atomically(path, format_peer_name(name) + "\n")
        except OSError as e:
            raise UserError(f"cannot write peer name file {path}: {e.strerror}") from None
        return
    except (OSError, UnicodeDecodeError):
        kept = ""
    if kept.lower() != format_peer_name(name):
        raise UserError(
            f"--name {format_peer_name(name)}: this host is peer {kept or '(unreadable)'}, kept "
            f"in {path}; to become another peer, `meshnet reset` and delete that file first"
        )


def _launch_background(config: Config, client: ApiClient) -> dict[str, Any]:
    """Start `launch --foreground` detached, logging to the state directory; wait until ready."""
    args = [sys.executable, "-m", "meshnet", "launch", "--foreground", "--log-to-state-dir"]
    args += relaunch_args(config)
    env = relaunch_environment(config, os.environ)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    logfile.rotate_if_full(config.log_file)
    with open(config.log_file, "ab") as log:
        start = log.tell()
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=env
        )
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(
                logfile.last_error(config.log_file, start)
                or f"meshnet exited with status {proc.returncode}; see {config.log_file}"
            )
        if client.is_ready():
            status: dict[str, Any] = client.get("/status")
            return status
        time.sleep(0.05)
    proc.terminate()
    raise UserError(f"meshnet did not become ready in {READY_TIMEOUT:.0f}s; see {config.log_file}")


@click.command()
@api_socket_option
def stop(api_socket: Path) -> None:
    """Stop the router gracefully."""
    client = ApiClient(api_socket)
    client.post("/stop")
    deadline = time.monotonic() + 15
    while api_socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if api_socket.exists():
        raise UserError("meshnet did not stop within 15s")


@click.command()
@click.argument("addresses", nargs=-1, metavar="HOST[:PORT]...")
@click.option(
    "--replace",
    is_flag=True,
    help="Make these the only peers to connect to: the others given before are forgotten.",
)
@api_socket_option
def connect(addresses: tuple[str, ...], replace: bool, api_socket: Path) -> None:
    """Add peers to connect to (and keep reconnecting to), kept across restarts."""
    if not addresses and not replace:
        raise click.UsageError("give at least one HOST[:PORT] (or --replace to drop them all)")
    result = ApiClient(api_socket).post(
        "/connect", {"addresses": list(addresses), "replace": replace}
    )
    for address in result["removed"]:
        click.echo(f"{address}: forgotten")
    for target in result["targets"]:
        click.echo(f"{target['address']}: " + ("added" if target["added"] else "already a target"))


@click.command()
@click.argument("addresses", nargs=-1, required=True, metavar="HOST[:PORT]...")
@api_socket_option
def forget(addresses: tuple[str, ...], api_socket: Path) -> None:
    """Stop connecting to peers added by launch or connect (also after a restart)."""
    result = ApiClient(api_socket).post("/forget", {"addresses": list(addresses)})
    missing = []
    for target in result["targets"]:
        if target["forgotten"]:
            click.echo(f"{target['address']}: forgotten")
        else:
            missing.append(target["address"])
    if missing:
        raise UserError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not a target")
