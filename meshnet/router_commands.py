"""`meshnet launch | stop | status | connect | forget | attach | reset | rmpeer`: the router."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import trio
from rich.table import Table

from meshnet.api.client import ApiClient
from meshnet.api.ipam import parse_spec
from meshnet.config import (
    DEFAULT_IPALLOC_RANGE,
    DEFAULT_PORT,
    Config,
    default_api_socket,
    default_state_dir,
)
from meshnet.dns.options import dns_launch_args, dns_launch_options, dns_settings
from meshnet.errors import UserError
from meshnet.gossip.connection_maker import normalize_address
from meshnet.integrations.docker.options import (
    docker_launch_args,
    docker_launch_options,
    docker_settings,
)
from meshnet.ipam.service import ALLOCATE_TIMEOUT, HANDOVER_TIMEOUT, parse_init
from meshnet.output import console

READY_TIMEOUT = 60.0


def api_socket_option(
    f: Callable[..., Any], *, names: tuple[str, ...] = ("--api-socket",)
) -> Callable[..., Any]:
    return click.option(
        *names,
        "api_socket",
        type=click.Path(path_type=Path),
        default=default_api_socket,
        envvar="MESHNET_API_SOCKET",
        show_default="/run/meshnet/meshnet.sock",
        help="The daemon's API socket (env MESHNET_API_SOCKET).",
    )(f)


def _read_password(password: str | None, password_file: Path | None) -> bytes | None:
    if password is not None and password_file is not None:
        raise UserError("give --password or --password-file, not both")
    if password_file is not None:
        try:
            text = password_file.read_text().rstrip("\n")
        except OSError as e:
            raise UserError(f"cannot read password file {password_file}: {e.strerror}") from None
        if not text:
            raise UserError(f"password file {password_file} is empty")
        return text.encode()
    if password is not None:
        if not password:
            raise UserError("the password is empty; leave it unset to run without encryption")
        return password.encode()
    return None


@click.command()
@click.argument("peers", nargs=-1, metavar="[PEER[:PORT]]...")
@click.option("--foreground", is_flag=True, help="Run in the foreground (for systemd).")
@click.option(
    "--password",
    envvar="MESHNET_PASSWORD",
    default=None,
    help="Encrypt and authenticate everything on the wire (env MESHNET_PASSWORD).",
)
@click.option(
    "--password-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Read the password from a file.",
)
@click.option("--nickname", default=None, help="Name shown for this peer  [default: hostname]")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="TCP (control) and UDP (data) port.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=default_state_dir,
    envvar="MESHNET_STATE_DIR",
    show_default="/var/lib/meshnet",
    help="Where identity and state persist (env MESHNET_STATE_DIR).",
)
@api_socket_option
@click.option(
    "--conn-limit",
    type=click.IntRange(1, 10000),
    default=100,
    show_default=True,
    help="Most connections to keep at once.",
)
@click.option(
    "--no-discovery",
    is_flag=True,
    help="Connect only to the given peers, not to peers learned from others.",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(0.1, 300),
    default=5.0,
    envvar="MESHNET_HEARTBEAT_INTERVAL",
    show_default=True,
    metavar="SECONDS",
    help="Idle time before a heartbeat; three missed ones mean a dead connection.",
)
@click.option(
    "--no-dataplane",
    is_flag=True,
    help="Run only the control plane: no bridge, TAP or UDP (a pure router of gossip).",
)
@click.option(
    "--no-fastdp",
    is_flag=True,
    help="Send everything over the sleeve, never over kernel VXLAN.",
)
@click.option(
    "--trusted-subnets",
    default="",
    envvar="MESHNET_TRUSTED_SUBNETS",
    metavar="CIDR,...",
    help="With a password, peers in these subnets may still use fastdp (unencrypted VXLAN; "
    "env MESHNET_TRUSTED_SUBNETS).",
)
@click.option(
    "--no-masq-local",
    is_flag=True,
    envvar="MESHNET_NO_MASQ_LOCAL",
    help="Traffic from outside the overlay to containers on this host keeps its source address "
    "(env MESHNET_NO_MASQ_LOCAL).",
)
@click.option(
    "--ipalloc-range",
    default=str(DEFAULT_IPALLOC_RANGE),
    show_default=True,
    metavar="CIDR",
    help="The range container addresses are allocated from, divided among the peers.",
)
@click.option(
    "--ipalloc-default-subnet",
    default=None,
    metavar="CIDR",
    help="Where `attach` allocates by default  [default: the whole range]",
)
@click.option(
    "--ipalloc-init",
    default="",
    metavar="consensus[=N]|seed=NAME,...|observer",
    help="How the range is first divided  [default: consensus over the launch peers and us]",
)
@click.option(
    "--http-addr",
    default=None,
    metavar="HOST:PORT",
    help="Also serve the API (and /metrics) over HTTP on this loopback address.",
)
@dns_launch_options
@docker_launch_options
def launch(
    peers: tuple[str, ...],
    foreground: bool,
    password: str | None,
    password_file: Path | None,
    nickname: str | None,
    port: int,
    state_dir: Path,
    api_socket: Path,
    conn_limit: int,
    no_discovery: bool,
    heartbeat_interval: float,
    no_dataplane: bool,
    no_fastdp: bool,
    trusted_subnets: str,
    no_masq_local: bool,
    ipalloc_range: str,
    ipalloc_default_subnet: str | None,
    ipalloc_init: str,
    http_addr: str | None,
    **dns_options: Any,
) -> None:
    """Start the router and connect to PEERs.

    Returns once the router is ready and prints its peer name; `--foreground` runs it here.
    """
    secret = _read_password(password, password_file)
    config = Config(
        peers=tuple(normalize_address(p, port) for p in peers),
        nickname=nickname or socket.gethostname(),
        port=port,
        password=secret,
        state_dir=state_dir,
        api_socket=api_socket,
        conn_limit=conn_limit,
        discovery=not no_discovery,
        heartbeat_interval=heartbeat_interval,
        dataplane=not no_dataplane,
        fastdp=not no_fastdp,
        trusted_subnets=_trusted_subnets(trusted_subnets),
        no_masq_local=no_masq_local,
        **_ipalloc_settings(ipalloc_range, ipalloc_default_subnet, ipalloc_init, len(peers)),
        dns=dns_settings(dns_options),
        docker=docker_settings(dns_options),  # the docker_* flags arrive there too
        http_addr=_loopback_address(http_addr) if http_addr else None,
    )
    client = ApiClient(api_socket)
    if client.is_ready():
        status = client.get("/status")
        raise UserError(
            f"meshnet is already running as {status['name']} ({status['nickname']}) on {api_socket}"
        )
    if foreground:
        from meshnet import daemon

        trio.run(daemon.run, config)
        return
    click.echo(_launch_background(config, client)["name"])


def _trusted_subnets(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(cidr.strip()) for cidr in text.split(",") if cidr.strip())
    except ValueError as e:
        raise UserError(f"bad --trusted-subnets {text!r}: {e}") from None


def _loopback_address(text: str) -> tuple[str, int]:
    """HOST:PORT (or [V6]:PORT) on loopback: the API has no authentication but the socket's
    mode, so it is never served where another host could reach it."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        if not sep or not ipaddress.ip_address(host).is_loopback:
            raise ValueError
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError
    except ValueError:
        raise UserError(
            f"--http-addr {text}: expected a loopback HOST:PORT, e.g. 127.0.0.1:6782"
        ) from None
    return host, number


def _ipalloc_settings(
    range_: str, default_subnet: str | None, init: str, peers: int
) -> dict[str, Any]:
    """The IPAM flags, checked now so a mistake is one line before anything starts."""

    def network(flag: str, text: str) -> ipaddress.IPv4Network:
        try:
            return ipaddress.IPv4Network(text)
        except ValueError as e:
            raise UserError(f"bad {flag} {text!r}: {e}") from None

    allocation_range = network("--ipalloc-range", range_)
    subnet = network("--ipalloc-default-subnet", default_subnet) if default_subnet else None
    if allocation_range.num_addresses < 4:
        raise UserError(f"--ipalloc-range {allocation_range} is too small")
    if subnet is not None and not subnet.subnet_of(allocation_range):
        raise UserError(
            f"--ipalloc-default-subnet {subnet} is not inside --ipalloc-range {allocation_range}"
        )
    if init:
        parse_init(init, peers)
    return {
        "ipalloc_range": allocation_range,
        "ipalloc_default_subnet": subnet,
        "ipalloc_init": init,
    }


def _launch_background(config: Config, client: ApiClient) -> dict[str, Any]:
    """Start `launch --foreground` detached, logging to the state directory; wait until ready."""
    args = [
        sys.executable,
        "-m",
        "meshnet",
        "launch",
        "--foreground",
        "--nickname",
        config.nickname,
        "--port",
        str(config.port),
        "--state-dir",
        str(config.state_dir),
        "--api-socket",
        str(config.api_socket),
        "--conn-limit",
        str(config.conn_limit),
        "--heartbeat-interval",
        str(config.heartbeat_interval),
        *config.peers,
    ]
    args += ["--ipalloc-range", str(config.ipalloc_range)]
    args += dns_launch_args(config.dns)
    args += docker_launch_args(config.docker)
    if config.ipalloc_default_subnet is not None:
        args += ["--ipalloc-default-subnet", str(config.ipalloc_default_subnet)]
    if config.ipalloc_init:
        args += ["--ipalloc-init", config.ipalloc_init]
    if not config.discovery:
        args.append("--no-discovery")
    if not config.dataplane:
        args.append("--no-dataplane")
    if not config.fastdp:
        args.append("--no-fastdp")
    if config.trusted_subnets:
        args += ["--trusted-subnets", ",".join(str(n) for n in config.trusted_subnets)]
    if config.no_masq_local:
        args.append("--no-masq-local")
    if config.http_addr is not None:
        host, port = config.http_addr
        args += ["--http-addr", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    env = {k: v for k, v in os.environ.items() if k != "MESHNET_PASSWORD"}
    if config.password is not None:
        env["MESHNET_PASSWORD"] = config.password.decode()  # never on the command line
    config.state_dir.mkdir(parents=True, exist_ok=True)
    with open(config.log_file, "ab") as log:
        start = log.tell()
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=env
        )
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(
                _last_error(config.log_file, start)
                or f"meshnet exited with status {proc.returncode}; see {config.log_file}"
            )
        if client.is_ready():
            status: dict[str, Any] = client.get("/status")
            return status
        time.sleep(0.05)
    proc.terminate()
    raise UserError(f"meshnet did not become ready in {READY_TIMEOUT:.0f}s; see {config.log_file}")


def _last_error(log_file: Path, start: int) -> str | None:
    with open(log_file, "rb") as f:
        f.seek(start)
        lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        if line.startswith("meshnet: "):
            return line.removeprefix("meshnet: ")
    return None


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
@click.argument("address", metavar="HOST[:PORT]")
@api_socket_option
def connect(address: str, api_socket: Path) -> None:
    """Add a peer to connect to (and keep reconnecting to)."""
    result = ApiClient(api_socket).post("/connect", {"address": address})
    click.echo(f"{result['address']}: " + ("added" if result["added"] else "already a target"))


@click.command()
@click.argument("address", metavar="HOST[:PORT]")
@api_socket_option
def forget(address: str, api_socket: Path) -> None:
    """Stop connecting to a peer added by launch or connect."""
    result = ApiClient(api_socket).post("/forget", {"address": address})
    if not result["forgotten"]:
        raise UserError(f"{result['address']} is not a target")
    click.echo(f"{result['address']}: forgotten")


JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group(invoke_without_command=True)
@api_socket_option
@JSON_OPTION
@click.pass_context
def status(ctx: click.Context, api_socket: Path, as_json: bool) -> None:
    """Show the router: identity, encryption, peers, connections, targets."""
    ctx.obj = ApiClient(api_socket)
    if ctx.invoked_subcommand is not None:
        return
    data = ctx.obj.get("/status")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    connections = data["connections"]
    rows = [
        ("Version", _version()),
        ("Name", f"{data['name']} ({data['nickname']})"),
        ("Encryption", "enabled" if data["encryption"] else "disabled"),
        ("Peers", str(data["peers"])),
        (
            "Connections",
            f"{sum(connections.values())} ("
            + ", ".join(f"{n} {state}" for state, n in sorted(connections.items()))
            + ")"
            if connections
            else "0",
        ),
        ("Targets", str(len(data["targets"]))),
        ("Port", str(data["port"])),
    ]
    from meshnet.ramps_commands import status_rows  # here: that module imports this one

    rows += status_rows(data)
    for key, value in rows:
        click.echo(f"{key:>12}: {value}")


def _version() -> str:
    from meshnet import __version__

    return __version__


def _subcommand(path: str, render: Callable[[list[dict[str, Any]]], Table]) -> Callable[..., Any]:
    @JSON_OPTION
    @click.option("--api-socket", type=click.Path(path_type=Path), default=None, hidden=True)
    @click.pass_obj
    def command(client: ApiClient, as_json: bool, api_socket: Path | None) -> None:
        if api_socket is not None:
            client = ApiClient(api_socket)
        data = client.get(path)
        if as_json:
            click.echo(json.dumps(data, indent=2))
        else:
            console().print(render(data))

    return command


def _peers_table(peers: list[dict[str, Any]]) -> Table:
    table = Table("peer", "nickname", "reachable", "route", "connections", box=None)
    for p in peers:
        if p["local"]:
            route = "(this peer)"
        elif not p["reachable"]:
            route = "-"
        elif p["via"]:
            route = "via " + ", ".join(p["via"])
        else:
            route = "direct"
        conns = ", ".join(
            c["nickname"] + ("" if c["established"] else "?") for c in p["connections"]
        )
        table.add_row(
            p["name"], p["nickname"], "yes" if p["reachable"] else "no", route, conns or "-"
        )
    return table


def _connections_table(conns: list[dict[str, Any]]) -> Table:
    table = Table(
        "", "address", "state", "udp", "path", "pmtu", "encrypted", "peer", "last error", box=None
    )
    for c in conns:
        peer = f"{c['peer']} ({c['nickname']})" if c["peer"] else "-"
        path = c.get("data_path") or {}
        table.add_row(
            "->" if c["direction"] == "outbound" else "<-",
            c["address"],
            c["state"],
            path.get("state", "-"),
            path.get("kind", "-"),
            str(path["pmtu"]) if "pmtu" in path else "-",
            "yes" if c["encrypted"] else "no",
            peer,
            c["last_error"] or "",
        )
    return table


def _targets_table(targets: list[dict[str, Any]]) -> Table:
    table = Table("address", "source", "state", "attempts", "peer", "last error", box=None)
    for t in targets:
        state = t["state"] + (f" (retry in {t['retry_in']:.0f}s)" if t["retry_in"] else "")
        table.add_row(
            t["address"],
            t["source"],
            state,
            str(t["attempts"]),
            t["peer"] or "-",
            t["last_error"] or "",
        )
    return table


status.command("peers", help="Every peer in the mesh, and the route to it.")(
    _subcommand("/status/peers", _peers_table)
)
status.command("connections", help="This peer's connections and recent failures.")(
    _subcommand("/status/connections", _connections_table)
)
status.command("targets", help="Addresses this peer connects to.")(
    _subcommand("/status/targets", _targets_table)
)


def _dataplane_tables(data: dict[str, Any]) -> Table:
    table = Table(
        "peer",
        "udp path",
        "path",
        "pmtu",
        "rtt ms",
        "sent",
        "received",
        "relayed",
        box=None,
        title=f"bridge {data['bridge']}, overlay MTU {data['overlay_mtu']}, UDP {data['port']}",
    )
    forwarding = data["forwarding"]

    def traffic(kind: str, peer: str) -> str:
        row = forwarding[kind].get(peer)
        return f"{row['datagrams']} dg, {row['bytes']} B" if row else "-"

    for peer, path in data["paths"].items():
        table.add_row(
            f"{peer} ({path['nickname']})",
            path["state"],
            path["kind"] if path["kind"] == "fastdp" else f"sleeve (fastdp {path['fastdp']})",
            str(path["pmtu"]),
            str(path["rtt_ms"]) if path["rtt_ms"] is not None else "-",
            traffic("sent", peer),
            traffic("received", peer),
            traffic("relayed", peer),
        )
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(forwarding["dropped"].items()))
    fast = data["fastdp"]
    fastdp = f"fastdp on UDP {fast['port']}" if fast["enabled"] else f"fastdp {fast['reason']}"
    table.caption = f"dropped: {dropped or 'none'}; MACs learned: {len(data['macs'])}; {fastdp}"
    return table


status.command(
    "dataplane", help="Each peer's path (fastdp or sleeve), sleeve traffic, drops by reason."
)(
    _subcommand("/status/dataplane", _dataplane_tables)  # type: ignore[arg-type]
)


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
@click.option("--ifname", default="ethwe", show_default=True, help="Interface name inside.")
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
@click.option("--ifname", default="ethwe", show_default=True, help="Interface name inside.")
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


def _ipam_table(data: dict[str, Any]) -> Table:
    consensus = data["consensus"]
    if data["mode"] == "consensus" and consensus != "ready":
        consensus += f" (consensus of {data['consensus_size']})"
    elif data["mode"] == "seed":
        consensus += f" (seeded among {len(data['seed'])})"
    elif data["mode"] == "observer":
        consensus += " (observer)"
    table = Table(
        "peer",
        "nickname",
        "ranges",
        "addresses",
        "in use",
        "share",
        "reachable",
        box=None,
        title=f"range {data['range']}, default subnet {data['default_subnet']}, ring {consensus}",
    )
    for p in data["peers"]:
        ranges = p["ranges"]
        shown = ", ".join(ranges[:3]) + (f" (+{len(ranges) - 3})" if len(ranges) > 3 else "")
        table.add_row(
            p["name"] + (" (this peer)" if p["local"] else ""),
            p["nickname"],
            shown or "-",
            str(p["size"]),
            str(p["in_use"]),
            f"{p['share']:.1%}",
            "yes" if p["reachable"] else "no (unreachable)",
        )
    notes = [f"{data['allocated_here']} addresses in use here"]
    if data["leaving"]:
        notes.append("handing its ranges over (reset)")
    if data["refused_merges"]:
        notes.append(f"refused ring merges: {sum(data['refused_merges'].values())}")
    table.caption = "; ".join(notes)
    return table


status.command("ipam", help="The address ranges: who owns what, what is in use, consensus.")(
    _subcommand("/status/ipam", _ipam_table)  # type: ignore[arg-type]
)


@click.command()
@click.option(
    "--force", is_flag=True, help="Even while containers here hold addresses (they are lost)."
)
@api_socket_option
def reset(force: bool, api_socket: Path) -> None:
    """Hand this peer's address ranges to a live peer, wait for its acknowledgement, and stop.

    Use it before removing a host for good; a peer that died without it is cleaned up from
    another host with `meshnet rmpeer`.
    """
    client = ApiClient(api_socket, timeout=HANDOVER_TIMEOUT + 15)
    result = client.post("/ipam/reset", {"force": force})
    if not result["acknowledged"]:
        raise UserError(
            f"{result.get('nickname') or result['handed_to']} did not acknowledge the "
            f"hand-over within {HANDOVER_TIMEOUT:.0f}s; the router keeps running and re-sending "
            "it: run `meshnet reset` again"
        )
    deadline = time.monotonic() + 15
    while api_socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if result["handed_to"] is None:
        click.echo("reset: this peer owned no addresses; stopped")
    else:
        click.echo(
            f"reset: {result['addresses']} addresses handed over to {result['handed_to']} "
            f"({result['nickname']}); stopped"
        )


@click.command()
@click.argument("peer", metavar="NAME")
@api_socket_option
def rmpeer(peer: str, api_socket: Path) -> None:
    """Reclaim the address ranges of a peer that is gone for good (NAME or nickname).

    Refused while that peer is reachable. Running it for the same peer on several hosts is
    safe: they all give its ranges to the same heir.
    """
    result = ApiClient(api_socket).post("/ipam/rmpeer", {"peer": peer})
    if result["heir"] is None:
        click.echo(f"{result['peer']}: owned no addresses")
    else:
        click.echo(
            f"{result['peer']}: {result['addresses']} addresses reclaimed by {result['heir']}"
        )
