"""Build, inspect, change and tear down a lab of simulated hosts in network namespaces.

Every namespace a lab makes is named `mn-<lab>-<host or container>` (and, in a lab with NAT hosts,
`mn-<lab>-<host>-nat` for each NAT router and `mn-<lab>-internet`) and written to the lab's
journal *before* it is created, so `down` removes everything even after `up` crashed or was killed
halfway. Links live inside the lab's namespaces (veth ends are created directly in their
namespace), so removing the namespaces removes every link; nothing is made in the root namespace.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from meshnet import logfile
from meshnet.api.client import ApiClient
from meshnet.constants import ALLOCATE_TIMEOUT, BRIDGE, CONTAINER_IFNAME, IPV6_MIN_MTU
from meshnet.dataplane.kernel import netlink
from meshnet.dataplane.kernel.nft import NftError, run_nft
from meshnet.dataplane.sleeve.segments import ENCAPSULATION_OVERHEAD
from meshnet.errors import UserError
from meshnet.lab import dns as lab_dns
from meshnet.lab import docker as lab_docker
from meshnet.lab.record import Journal, LabRecord
from meshnet.lab.spawner import RouterStart, Spawner
from meshnet.lab.topology import (
    INTERNET,
    OVERLAY_SPECS,
    InternetPlan,
    PlannedContainer,
    PlannedLink,
    PlannedUplink,
    Topology,
    check_loss,
    check_overlay,
    format_rate,
    nat_router_name,
    parse_rate,
    plan_addresses,
    plan_internet,
)

DEFAULT_ROOT = Path("/run/meshnet/lab")
# Interface names of the internet and the NATs (hosts' own links are "to-<peer>").
UPLINK_IFNAME = "to-internet"  # a public host's link to the internet router
NAT_HOST_IFNAME = "to-nat"  # a NATed host's link to its NAT router
NAT_LAN_IFNAME = "lan"  # the NAT router's end of that link
NAT_WAN_IFNAME = "wan"  # the NAT router's link to the internet router
NAT_TABLE = "lab-nat"  # nftables table (family ip) in each NAT router
INTERNET_TABLE = "lab-internet"  # nftables table (family ip) in the internet router
# How long a router may take to answer once started (more, from the start of `up`, when others
# wait their turn to start).
ROUTER_READY_TIMEOUT = 300.0
#: Routers started and not yet answering, at most: enough to keep 2 cores busy.
ROUTERS_STARTING = 6
# Attaches (and readiness checks) in flight at once: each is an API call that mostly waits.
ATTACH_WORKERS = 16
#: How long one attach may take: IPAM's own wait, and then some. In a 100-host lab on 2 cores
#: an attach took over 75 s while every router learned every other container (DNS, fastdp).
ATTACH_TIMEOUT = ALLOCATE_TIMEOUT + 150
_LAB_NAME = re.compile(r"^[a-z0-9]{1,12}$")


def lab_root() -> Path:
    return Path(os.environ.get("MESHNET_LAB_ROOT", str(DEFAULT_ROOT)))


def check_lab_name(name: str) -> str:
    # No '-' in lab names: "mn-a-" must never be a prefix of another lab's namespaces.
    if not _LAB_NAME.match(name):
        raise UserError(f"bad lab name {name!r}: 1-12 lowercase letters and digits")
    return name


def namespace_prefix(lab: str) -> str:
    return f"mn-{lab}-"


def require_root() -> None:
    if os.geteuid() != 0:
        raise UserError("meshnet lab needs root to create network namespaces (try sudo)")


def list_labs() -> list[str]:
    root = lab_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _LAB_NAME.match(p.name))


def resolve_name(name: str | None) -> str:
    """The lab a command means: the one named, or else the only one there is."""
    labs = list_labs()
    if name is not None:
        check_lab_name(name)
        if name not in labs:
            raise UserError(
                f"no lab named {name!r}"
                + (f" (labs: {', '.join(labs)})" if labs else " (no lab is running)")
            )
        return name
    if not labs:
        raise UserError("no lab is running: start one with `meshnet lab up`")
    if len(labs) > 1:
        raise UserError(f"several labs are running ({', '.join(labs)}): choose one with --name")
    return labs[0]


def _link_ifname(peer: str) -> str:
    return f"to-{peer}"


def _container_host_ifname(container: str) -> str:
    return f"ve-{container}"


def _name_taken(name: str) -> UserError:
    return UserError(
        f"a lab named {name!r} already exists: choose another --name, "
        f"or remove it with `meshnet lab down --name {name}`"
    )


def check_can_create(name: str, mtu: int) -> None:
    """Everything that would stop `up` before it builds anything."""
    require_root()
    check_lab_name(name)
    if not 576 <= mtu <= 9000:
        raise UserError(f"--mtu must be between 576 and 9000, not {mtu}")
    if (lab_root() / name).exists():
        raise _name_taken(name)
    prefix = namespace_prefix(name)
    leftovers = [n for n in netlink.list_namespaces() if n.startswith(prefix)]
    if leftovers:
        raise UserError(
            f"namespaces named {prefix}* exist but no lab {name!r} owns them "
            f"({', '.join(leftovers[:3])}): remove them or choose another --name"
        )


def default_overlay(mtu: int, *, docker: bool, daemons: bool) -> str:
    """What `lab up` gives containers without --overlay: dual stack where the routers attach
    them and the underlay MTU leaves IPv6 its 1280 bytes; else IPv4 only, as before --overlay
    existed."""
    if docker or not daemons or mtu - ENCAPSULATION_OVERHEAD < IPV6_MIN_MTU:
        return "ipv4"
    return "dual"


def up(
    name: str,
    topology: Topology,
    *,
    mtu: int = 1500,
    daemons: bool = True,
    password: str | None = None,
    dns_upstreams: tuple[str, ...] = (),
    fastdp: bool = True,
    docker: bool = False,
    overlay: str = "ipv4",
    progress: Callable[[str], None] = lambda _: None,
) -> LabRecord:
    """Build the lab and start a router in every host (unless `daemons` is False).

    With `docker`, every host also runs a dockerd and the containers are Docker containers.
    `overlay` (one of topology.OVERLAYS) is the families of the addresses each container's
    router gives it. Its default here is IPv4, which the tests and benches written before
    dual-stack lab containers rely on (one address per container); `meshnet lab up` defaults to
    dual stack. On any failure, remove what was built and re-raise.
    """
    check_can_create(name, mtu)
    check_overlay(overlay)
    if docker:
        if not daemons:
            raise UserError("--docker needs the routers: drop --no-daemons")
        lab_docker.check_available()
    if overlay != "ipv4" and (docker or not daemons):
        raise UserError(
            f"--overlay {overlay} needs routers attaching the containers "
            + ("(a --docker lab attaches them IPv4-only)" if docker else "(drop --no-daemons)")
        )
    if overlay != "ipv4" and mtu - ENCAPSULATION_OVERHEAD < IPV6_MIN_MTU:
        # The kernel turns IPv6 off on a link below 1280 bytes (RFC 8200's minimum).
        raise UserError(
            f"--overlay {overlay}: --mtu {mtu} leaves containers {mtu - ENCAPSULATION_OVERHEAD} "
            f"bytes, and IPv6 needs {IPV6_MIN_MTU} (use --mtu "
            f"{IPV6_MIN_MTU + ENCAPSULATION_OVERHEAD} or more, or --overlay ipv4)"
        )
    directory = lab_root() / name
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir()
    except FileExistsError:
        raise _name_taken(name) from None
    prefix = namespace_prefix(name)
    links, containers = plan_addresses(topology)
    internet = plan_internet(topology, links)
    record = LabRecord(
        name=name,
        state="building",
        mtu=mtu,
        hosts=[
            {
                "name": h.name,
                "namespace": prefix + h.name,
                "dir": str(directory / "hosts" / h.name),
                **({"nat": h.nat} if h.nat else {}),
            }
            for h in topology.hosts
        ],
        links=[{**asdict(link), "up": True} for link in links],
        containers=[{**asdict(c), "namespace": prefix + c.name} for c in containers],
        created=time.time(),
        daemons=daemons,
        encrypted=password is not None,
        dns_upstreams=list(dns_upstreams),
        fastdp=fastdp,
        docker=docker,
        overlay=overlay,
        internet=_internet_record(prefix, internet),
    )
    for entry in record.hosts + record.containers if docker else []:
        entry["docker"] = True
    record.save(directory)
    journal = Journal(directory / "journal")
    try:
        _build(record, links, containers, journal, progress)
        if internet is not None:
            _build_internet(record, internet, journal, progress)
        if daemons and docker:
            _start_routers(record, record.hosts, password, progress)

            def dns(host: dict[str, Any]) -> dict[str, Any] | None:
                return lab_dns.host_dns(host_api_socket(host["dir"]))

            lab_docker.start_engines(record, journal, dns, progress)
            lab_docker.run_containers(record, host_api_socket, dns, progress)
        elif daemons:
            _start_routers(record, record.hosts, password, progress)
            _attach_containers(record, progress)
            lab_dns.write_resolv_confs(record, journal, host_api_socket, progress)
        if daemons:
            progress("routers finding each other")
            _wait_for_mesh(record)
    except BaseException:
        record.state = "failed"
        record.save(directory)
        kept = _keep_router_logs(record, failed_logs_dir(name))
        progress(
            f"failed: removing what was built (router logs kept in {kept})"
            if kept
            else "failed: removing what was built"
        )
        _teardown(name, directory)
        raise
    record.state = "up"
    record.save(directory)
    return record


def failed_logs_dir(name: str) -> Path:
    """Where a lab that failed to come up leaves its routers' logs (outside the lab's own
    directory, which goes with the rest)."""
    return lab_root().parent / "lab-failed" / name


def _keep_router_logs(record: LabRecord, into: Path) -> Path | None:
    """Copy every host's router log to ``into`` (HOST.log); None if there was none."""
    kept = False
    for host in record.hosts:
        log = Path(host["dir"]) / "meshnet.log"
        try:
            into.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, into / f"{host['name']}.log")
        except OSError:
            continue
        kept = True
    return into if kept else None


def _create_namespace(journal: Journal, namespace: str) -> None:
    journal.record("netns", namespace)
    try:
        netlink.create_namespace(namespace)
    except netlink.NamespaceExists:
        # Not ours after all (made since our check): never remove it.
        journal.record("foreign", namespace)
        raise


def _build(
    record: LabRecord,
    links: list[PlannedLink],
    containers: list[PlannedContainer],
    journal: Journal,
    progress: Callable[[str], None],
) -> None:
    for host in record.hosts:
        progress(f"host {host['name']}")
        Path(host["dir"]).mkdir(parents=True, exist_ok=True)
        _create_namespace(journal, host["namespace"])
        if not record.daemons:  # otherwise the router makes its bridge
            with netlink.namespace(host["namespace"]) as ns:
                ns.create_bridge(BRIDGE, mtu=record.mtu)
                ns.set_up(BRIDGE)
    namespaces = {h["name"]: h["namespace"] for h in record.hosts}
    for link in links:
        progress(f"link {link.a} - {link.b}")
        a_if, b_if = _link_ifname(link.b), _link_ifname(link.a)
        _addressed_veth(
            (namespaces[link.a], a_if, link.addresses(link.a)),
            (namespaces[link.b], b_if, link.addresses(link.b)),
            record.mtu,
        )
        if link.loss or link.rate:  # a new link has no faults to clear: no nft, no tc
            _apply_faults(namespaces[link.a], a_if, link.loss, link.rate)
            _apply_faults(namespaces[link.b], b_if, link.loss, link.rate)
    for c in containers:
        progress(f"container {c.name}")
        if record.docker:
            continue  # a Docker container, run once the host's dockerd is up
        namespace = namespace_prefix(record.name) + c.name
        _create_namespace(journal, namespace)
        if record.daemons:
            continue  # attached through the host's router once it runs
        host_if = _container_host_ifname(c.name)
        with netlink.namespace(namespaces[c.host]) as ns:
            ns.create_veth(host_if, CONTAINER_IFNAME, namespace, mtu=record.mtu)
            ns.set_master(host_if, BRIDGE)
            ns.set_up(host_if)
        with netlink.namespace(namespace) as ns:
            ns.add_address(CONTAINER_IFNAME, c.address)
            ns.set_up(CONTAINER_IFNAME)


def _internet_record(prefix: str, plan: InternetPlan | None) -> dict[str, Any] | None:
    if plan is None:
        return None
    return {
        "namespace": prefix + INTERNET,
        "public": [asdict(u) for u in plan.public],
        "nats": [{**asdict(n), "namespace": prefix + nat_router_name(n.host)} for n in plan.nats],
    }


def nat_ruleset(kind: str) -> str:
    """A home router's nftables (or a CGNAT's, with `random`): what leaves by the WAN takes the
    router's address; from outside only replies come in, so nothing reaches the LAN unasked."""
    random = " random" if kind == "random" else ""
    return (
        f"table ip {NAT_TABLE} {{}}\ndelete table ip {NAT_TABLE}\n"
        f"table ip {NAT_TABLE} {{\n"
        " chain postrouting {\n"
        "  type nat hook postrouting priority srcnat; policy accept;\n"
        f'  oifname "{NAT_WAN_IFNAME}" masquerade{random}\n'
        " }\n"
        # ("fwd" is an nft keyword: not a chain name.)
        " chain forward {\n"
        "  type filter hook forward priority filter; policy drop;\n"
        "  ct state established,related accept\n"
        f'  iifname "{NAT_LAN_IFNAME}" accept\n'
        " }\n"
        "}\n"
    )


def internet_ruleset(public_hosts: list[str]) -> str:
    """The internet router joins NATs to public hosts and NATs to NATs, never two public hosts:
    between those only the topology's [[links]] count, as in a lab without NAT."""
    names = ", ".join(f'"{_link_ifname(h)}"' for h in public_hosts)
    return (
        f"table ip {INTERNET_TABLE} {{}}\ndelete table ip {INTERNET_TABLE}\n"
        f"table ip {INTERNET_TABLE} {{\n"
        " chain forward {\n"
        "  type filter hook forward priority filter; policy accept;\n"
        f"  iifname {{ {names} }} oifname {{ {names} }} reject with icmp type admin-prohibited\n"
        " }\n"
        "}\n"
    )


def _build_internet(
    record: LabRecord,
    plan: InternetPlan,
    journal: Journal,
    progress: Callable[[str], None],
) -> None:
    """The internet router, linked to every public host and to a NAT router per NATed host.

    Public hosts and NAT routers route everything they have no link for to the internet; the
    internet router knows every public address, and no private one, so a NATed host is reached
    only through what its NAT lets back in.
    """
    prefix = namespace_prefix(record.name)
    router = prefix + INTERNET
    namespaces = {h["name"]: h["namespace"] for h in record.hosts}
    progress(INTERNET)
    _create_namespace(journal, router)
    netlink.set_ipv4_forwarding(router)
    for uplink in plan.public:
        _link_to_internet(router, namespaces[uplink.host], UPLINK_IFNAME, uplink, record.mtu)
    for nat in plan.nats:
        progress(f"NAT of {nat.host} ({nat.kind})")
        nat_namespace = prefix + nat_router_name(nat.host)
        _create_namespace(journal, nat_namespace)
        netlink.set_ipv4_forwarding(nat_namespace)
        _addressed_veth(
            (nat_namespace, NAT_LAN_IFNAME, nat.lan_address),
            (namespaces[nat.host], NAT_HOST_IFNAME, nat.host_address),
            record.mtu,
            default_route=True,
        )
        _link_to_internet(router, nat_namespace, NAT_WAN_IFNAME, nat.uplink, record.mtu)
        run_nft(
            "-f", "-", script=nat_ruleset(nat.kind), namespace=nat_namespace, needed_by="lab NAT"
        )
    if len(plan.public) > 1:
        script = internet_ruleset([u.host for u in plan.public])
        run_nft("-f", "-", script=script, namespace=router, needed_by="lab NAT")


def _link_to_internet(
    router: str, namespace: str, ifname: str, uplink: PlannedUplink, mtu: int
) -> None:
    """One link from the internet router to a public host or NAT router, whose default route
    it becomes; the router reaches the host's other underlay addresses through it too."""
    router_ifname = _link_ifname(uplink.host)
    _addressed_veth(
        (router, router_ifname, uplink.router_address),
        (namespace, ifname, uplink.address),
        mtu,
        default_route=True,
    )
    if uplink.routed:
        with netlink.namespace(router) as ns:
            for destination in uplink.routed:
                ns.add_route(destination, router_ifname, gateway=_ip(uplink.address))


Addresses = str | tuple[str, ...]


def _addressed_veth(
    a: tuple[str, str, Addresses],
    b: tuple[str, str, Addresses],
    mtu: int,
    *,
    default_route: bool = False,
) -> None:
    """A veth pair between two namespaces, each end (namespace, interface, address/prefix or
    several) addressed and up; with ``default_route``, b's default IPv4 route goes via a's
    (first) address. IPv6 addresses skip duplicate address detection: usable at once."""
    (a_ns, a_if, a_addresses), (b_ns, b_if, b_addresses) = a, b
    a_list = (a_addresses,) if isinstance(a_addresses, str) else a_addresses
    b_list = (b_addresses,) if isinstance(b_addresses, str) else b_addresses
    with netlink.namespace(a_ns) as ns:
        ns.create_veth(a_if, b_if, b_ns, mtu=mtu)
        for address in a_list:
            ns.add_address(a_if, address)
        ns.set_up(a_if)
    with netlink.namespace(b_ns) as ns:
        for address in b_list:
            ns.add_address(b_if, address)
        ns.set_up(b_if)
        if default_route:
            ns.add_route("0.0.0.0/0", b_if, gateway=_ip(a_list[0]))


def _ip(cidr: str) -> str:
    return cidr.split("/")[0]


def host_api_socket(host_dir: str | Path) -> Path:
    return Path(host_dir) / "meshnet.sock"


def host_environment(host: dict[str, Any]) -> dict[str, str]:
    """What makes `meshnet ...` run inside a lab host talk to that host's router."""
    return {
        "MESHNET_API_SOCKET": str(host_api_socket(host["dir"])),
        "MESHNET_STATE_DIR": str(host["dir"]),
        **lab_docker.host_environment(host),  # its dockerd, or: ignore the machine's
    }


def _neighbour_addresses(record: LabRecord, host: str) -> list[str]:
    """The underlay addresses `host` reaches its topology neighbours at.

    A NATed host's neighbours are the public hosts, at their internet addresses; nobody is told
    a NATed host's private address (only its own NAT router could reach it).
    """
    if record.internet is not None and record.find_host(host).get("nat"):
        return [_ip(u["address"]) for u in record.internet["public"]]
    out = []
    for link in record.links:
        if host not in (link["a"], link["b"]):
            continue
        other = "b" if link["a"] == host else "a"
        # A dual link: the IPv6 address (the IPv4 one works too; one target per neighbour).
        address = link.get(f"{other}_address6") or link[f"{other}_address"]
        out.append(_listen_target(_ip(address)))
    return out


def _listen_target(ip: str) -> str:
    """A peer address as `meshnet launch` takes it: IPv6 in brackets."""
    return f"[{ip}]" if ":" in ip else ip


def _start_routers(
    record: LabRecord,
    hosts: list[dict[str, Any]],
    password: str | None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, str]:
    """Start the routers of `hosts`, at most ROUTERS_STARTING at once (the next as soon as one
    answers), each told only of its topology neighbours; returns each host's peer name.

    A bounded number at once: a router's start-up is CPU (the mesh's first gossip, its devices),
    and 100 starting at once on 2 cores starved each other past any deadline; waves of 10, each
    waiting for its slowest, left the CPU idle at each wave's end. Each router is forked by the
    lab's spawner (meshnet.lab.spawner), which imported the daemon once, from options parsed as
    `meshnet launch --foreground` parses them; it logs to its state directory, in a session of
    its own. `down` finds each router by its namespace, so no pid is journaled: a recorded pid
    could belong to another process by the time `down` runs.
    """
    # The CLI's own parsing of launch options, needed only here (and not by the spawner).
    from meshnet.cli.launch import parse_foreground_launch

    env = {k: v for k, v in os.environ.items() if k != "MESHNET_PASSWORD"}
    todo = list(hosts)
    # host: (its entry, its router's pid, where its log was when it started, when it started)
    starting: dict[str, tuple[dict[str, Any], int, int, float]] = {}
    names: dict[str, str] = {}
    # Asked several at once: a router that others starve of CPU may take seconds to answer.
    with (
        Spawner(lab_root() / record.name) as spawner,
        ThreadPoolExecutor(max_workers=ATTACH_WORKERS) as pool,
    ):
        while todo or starting:
            while todo and len(starting) < ROUTERS_STARTING:
                host = todo.pop(0)
                log_file = Path(host["dir"]) / "meshnet.log"
                log_file.parent.mkdir(parents=True, exist_ok=True)
                logfile.rotate_if_full(log_file)
                offset = log_file.stat().st_size if log_file.exists() else 0
                launch, warnings = parse_foreground_launch(_launch_args(record, host), password)
                pid = spawner.start(
                    RouterStart(
                        launch,
                        host["namespace"],
                        log_file,
                        {**env, **host_environment(host)},
                        tuple(warnings),
                    )
                )
                starting[host["name"]] = (host, pid, offset, time.monotonic())
            pending = list(starting)
            answers = pool.map(_peer_name, [starting[n][0] for n in pending])
            for host_name, peer_name in zip(pending, answers, strict=True):
                host, pid, offset, _ = starting[host_name]
                if peer_name is not None:
                    names[host_name] = peer_name
                    del starting[host_name]
                    progress(f"router {host_name} is {peer_name}")
                elif not _alive(pid):
                    log_file = Path(host["dir"]) / "meshnet.log"
                    why = logfile.last_error(log_file, offset)
                    raise UserError(
                        f"router on {host_name} did not start: "
                        + (why or f"it ended; see {log_file}")
                    )
            late = [
                n
                for n, entry in starting.items()
                if time.monotonic() - entry[3] > ROUTER_READY_TIMEOUT
            ]
            if late:
                raise UserError(
                    f"routers on {', '.join(sorted(late))} did not become ready in "
                    f"{ROUTER_READY_TIMEOUT:.0f}s; see meshnet.log in their host directories"
                )
            if starting:
                time.sleep(0.1)  # asking routers costs CPU that those still starting need
    return names


def router_command(directory: Path, host_name: str) -> tuple[list[str], dict[str, str]]:
    """The ``meshnet`` arguments and the environment that start a host's router as `up` does
    (its routers are forked from one spawner, so no process shows them): for a test or a tool
    that starts one again by hand."""
    record = LabRecord.load(directory)
    host = next((h for h in record.hosts if h["name"] == host_name), None)
    if host is None:
        raise UserError(f"no host {host_name} in lab {record.name}")
    env = {k: v for k, v in os.environ.items() if k != "MESHNET_PASSWORD"}
    args = ["launch", "--foreground", *_launch_args(record, host)]
    return args, {**env, **host_environment(host)}


def _launch_args(record: LabRecord, host: dict[str, Any]) -> list[str]:
    """`meshnet launch --foreground` options of a host's router (its environment, from
    `host_environment`, as flags: they win over this process's own environment)."""
    environment = host_environment(host)
    docker = (
        [
            "--docker-host",
            environment["DOCKER_HOST"],
            "--docker-plugin-dir",
            environment["MESHNET_DOCKER_PLUGIN_DIR"],
        ]
        if host.get("docker")
        else ["--no-docker"]
    )
    return [
        "--log-to-state-dir",
        "--nickname",
        host["name"],
        "--state-dir",
        environment["MESHNET_STATE_DIR"],
        "--api-socket",
        environment["MESHNET_API_SOCKET"],
        *docker,
        # IPAM: the hosts of the lab agree on the ring at the first allocation.
        "--ipalloc-init",
        f"consensus={len(record.hosts)}",
        *lab_dns.launch_args(record),
        *([] if record.fastdp else ["--no-fastdp"]),
        "--",
        *_neighbour_addresses(record, host["name"]),
    ]


def _peer_name(host: dict[str, Any]) -> str | None:
    """The router's peer name once it answers `/status` (None before: a router still starting
    may accept a connection and drop it, with 100 others starting beside it on 2 cores)."""
    socket = host_api_socket(host["dir"])
    if not socket.exists():  # not listening yet: no need for an HTTP client to learn that
        return None
    try:
        status = ApiClient(socket, timeout=5).get("/status")
    except UserError:
        return None
    name: str = status["name"]
    return name


def _attach_containers(record: LabRecord, progress: Callable[[str], None]) -> None:
    """`meshnet attach net:default [net:default6] CONTAINER` on each container's host (the lab's
    overlay families), as a user would: IPAM gives the addresses (the planned IPv4 one only stays
    for labs without routers).

    Several at once: each attach mostly waits on its router (IPAM, netlink), so a 100-host lab
    attaches in a fraction of the time one after the other takes."""
    hosts = {h["name"]: h for h in record.hosts}

    def attach(c: dict[str, Any]) -> list[str]:
        client = ApiClient(host_api_socket(hosts[c["host"]]["dir"]), timeout=ATTACH_TIMEOUT)
        addresses = list(OVERLAY_SPECS[record.overlay])
        body = {"container": c["namespace"], "addresses": addresses, "name": c["name"]}
        result = client.post("/attach", body)
        given: list[str] = result["addresses"]
        return given

    with ThreadPoolExecutor(max_workers=ATTACH_WORKERS) as pool:
        futures = {pool.submit(attach, c): c for c in record.containers}
        try:
            for future in as_completed(futures):
                c = futures[future]
                c["addresses"] = future.result()
                c["address"] = c["addresses"][0]  # IPv4 first, if it has one
                progress(f"attached {c['name']} {' '.join(c['addresses'])}")
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _components(record: LabRecord) -> dict[str, int]:
    """Each host's number of hosts it can reach through the topology (itself included)."""
    adjacent: dict[str, set[str]] = {h["name"]: set() for h in record.hosts}
    for link in record.links:
        adjacent[link["a"]].add(link["b"])
        adjacent[link["b"]].add(link["a"])
    if record.internet is not None:  # a NATed host dials every public host
        for nat in record.internet["nats"]:
            for uplink in record.internet["public"]:
                adjacent[nat["host"]].add(uplink["host"])
                adjacent[uplink["host"]].add(nat["host"])
    sizes = {}
    for host in adjacent:
        seen, todo = {host}, [host]
        while todo:
            for n in adjacent[todo.pop()] - seen:
                seen.add(n)
                todo.append(n)
        sizes[host] = len(seen)
    return sizes


def _wait_for_mesh(record: LabRecord, timeout: float = 20.0) -> bool:
    """Until every router knows every peer it can reach, so the summary shows a settled mesh.

    Not converging in time is not an error: the lab is built, and status shows the truth.
    """
    expected = _components(record)
    deadline = time.monotonic() + timeout
    pending = list(record.hosts)
    while pending and time.monotonic() < deadline:
        host = pending[0]
        try:
            peers = ApiClient(host_api_socket(host["dir"]), timeout=2).get("/status")["peers"]
        except UserError:
            peers = 0
        if peers >= expected[host["name"]]:
            pending.pop(0)
        else:
            time.sleep(0.1)
    return not pending


def start_router(name: str | None, host: str, *, password: str | None = None) -> str:
    """(Re)start the router of one lab host; returns its peer name."""
    name = resolve_name(name)
    record = LabRecord.load(lab_root() / name)
    entry = record.find_host(host)
    return _start_routers(record, [entry], password)[host]


def _apply_faults(namespace: str, ifname: str, loss: float, rate: int | None) -> None:
    """Loss is dropped on arrival (netdev ingress), so each end's rule shapes one direction."""
    if loss or _has_loss_table(namespace, ifname):
        table = f"meshnet_lab_{ifname.replace('-', '_')}"
        script = f"table netdev {table} {{}}\ndelete table netdev {table}\n"
        if loss >= 100:
            verdict = "drop"
        elif loss > 0:
            # numgen compares integers: hundredths of a percent keep 0.01% resolution.
            verdict = f"numgen random mod 10000 < {round(loss * 100)} drop"
        else:
            verdict = ""
        if verdict:
            script += (
                f"table netdev {table} {{\n chain ingress {{\n"
                f'  type filter hook ingress device "{ifname}" priority 0;\n'
                f"  {verdict}\n }}\n}}\n"
            )
        run_nft("-f", "-", script=script, namespace=namespace, needed_by="link loss")
    with netlink.namespace(namespace) as ns:
        ns.set_rate(ifname, rate)


def _has_loss_table(namespace: str, ifname: str) -> bool:
    # Only consulted when clearing loss; without a working nft no table was ever made.
    try:
        tables = run_nft("list", "tables", namespace=namespace)
    except NftError:
        return False
    return f"meshnet_lab_{ifname.replace('-', '_')}" in tables


def down(name: str | None) -> str:
    """Remove everything the lab made; returns the lab's name."""
    require_root()
    name = resolve_name(name)
    _teardown(name, lab_root() / name)
    return name


def _teardown(name: str, directory: Path) -> None:
    """Remove what the journal says the lab made; safe to repeat, and to run after a crash.

    A Ctrl-C or SIGTERM meanwhile is held until the end (then delivered), so that a teardown
    is not itself left halfway; the journal and lab directory go last, so a teardown that was
    killed anyway is finished by the next `down`.
    """
    with _signals_held():
        journal = Journal(directory / "journal")
        entries = list(journal.entries())
        foreign = {v for k, v in entries if k == "foreign"}
        namespaces = [v for k, v in entries if k == "netns" and v not in foreign]
        prefix = namespace_prefix(name)
        owned = [n for n in namespaces if isinstance(n, str) and n.startswith(prefix)]
        # dockerd first: its containers would outlive shims killed with the host's processes.
        lab_docker.stop_engines(
            [v for k, v in entries if k == "dockerd" and str(v).startswith(str(directory))],
            [v for k, v in entries if k == "cgroup" and str(v).startswith(f"/{prefix}")],
        )
        _stop_processes(owned)
        for namespace in reversed(owned):  # containers before their hosts
            netlink.remove_namespace(namespace)
            etc = Path("/etc/netns") / namespace
            if etc.is_dir():
                shutil.rmtree(etc, ignore_errors=True)
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends, then act as they would have (main thread
    only: elsewhere signals never run Python handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    kinds = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda sig, _frame: held.append(sig)) for sig in kinds}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: installed outside Python, nothing to put back
                signal.signal(sig, handler)
        for number in dict.fromkeys(held):
            signal.raise_signal(number)


def _stop_processes(namespaces: list[str], grace: float = 5.0) -> None:
    """SIGTERM what runs in the lab's namespaces, SIGKILL what stays; again until none is left
    (a router may have been starting, or restarting its children, during the first walk)."""
    for _ in range(3):
        targets = set(netlink.namespaces_pids(namespaces))
        targets.discard(os.getpid())
        if not targets:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
            for pid in list(targets):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    targets.discard(pid)
            deadline = time.monotonic() + wait
            while targets and time.monotonic() < deadline:
                targets = {pid for pid in targets if _alive(pid)}
                time.sleep(0.05)
            if not targets:
                break


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def status(name: str | None) -> dict[str, Any]:
    """The lab as JSON-ready data: hosts with underlay addresses, containers, links."""
    name = resolve_name(name)
    directory = lab_root() / name
    record = LabRecord.load(directory)
    by_host: dict[str, list[dict[str, Any]]] = {h["name"]: [] for h in record.hosts}
    for link in record.links:
        for end, other in (("a", "b"), ("b", "a")):
            for key in (f"{end}_address", f"{end}_address6"):
                if link.get(key):
                    by_host[link[end]].append(
                        {
                            "peer": link[other],
                            "interface": _link_ifname(link[other]),
                            "address": link[key],
                        }
                    )
    internet = record.internet
    for uplink in internet["public"] if internet else []:
        by_host[uplink["host"]].append(
            {"peer": INTERNET, "interface": UPLINK_IFNAME, "address": uplink["address"]}
        )
    for nat in internet["nats"] if internet else []:
        by_host[nat["host"]].append(
            {
                "peer": nat_router_name(nat["host"]),
                "interface": NAT_HOST_IFNAME,
                "address": nat["host_address"],
            }
        )
    hosts = []
    for h in record.hosts:
        hosts.append(
            {
                "name": h["name"],
                "namespace": h["namespace"],
                "running": netlink.namespace_exists(h["namespace"]),
                "dir": h["dir"],
                "underlay": by_host[h["name"]],
                "addresses": [u["address"].split("/")[0] for u in by_host[h["name"]]],
                "containers": [c["name"] for c in record.containers if c["host"] == h["name"]],
                "api_socket": str(host_api_socket(h["dir"])),
                "router": _router_status(h) if record.daemons else None,
                "nat": h.get("nat"),  # the kind of NAT the host sits behind, or None
            }
        )
    containers = []
    for c in record.containers:
        mac = None
        addresses = c.get("addresses") or [c["address"]]
        namespace = c["namespace"]
        if c.get("docker"):  # a Docker container: its PID's namespace, while it runs
            pid = lab_docker.container_pid(record.find_host(c["host"])["dir"], c["name"])
            namespace = f"/proc/{pid}/ns/net" if pid else ""
        if namespace and netlink.namespace_exists(namespace):
            try:
                with netlink.namespace(namespace) as ns:
                    ethwe = ns.link(CONTAINER_IFNAME)
                mac = ethwe.mac
                # What the kernel says: IPAM may have given more (or other) addresses.
                live = [a for a in ethwe.addresses if not a.lower().startswith("fe80:")]
                addresses = live or addresses
            except netlink.NetlinkError:
                mac = None
        containers.append(
            {
                "name": c["name"],
                "host": c["host"],
                "namespace": namespace or c["namespace"],
                "interface": CONTAINER_IFNAME,
                "mac": mac,
                "addresses": addresses,
            }
        )
    links = [
        {
            "a": link["a"],
            "b": link["b"],
            "addresses": [
                link[key]
                for key in ("a_address", "b_address", "a_address6", "b_address6")
                if link.get(key)
            ],
            "up": link["up"],
            "loss": link["loss"],
            "rate": format_rate(link["rate"]) if link["rate"] else None,
        }
        for link in record.links
    ]
    return {
        "name": record.name,
        "state": record.state,
        "mtu": record.mtu,
        "directory": str(directory),
        "encrypted": record.encrypted,
        "overlay": record.overlay,
        "hosts": hosts,
        "containers": containers,
        "links": links,
        "nats": [
            {
                "host": nat["host"],
                "kind": nat["kind"],
                "namespace": nat["namespace"],
                "running": netlink.namespace_exists(nat["namespace"]),
                "host_address": _ip(nat["host_address"]),  # private, behind the NAT
                "gateway": _ip(nat["lan_address"]),
                # What others see a NATed host's packets come from.
                "public_address": _ip(nat["uplink"]["address"]),
            }
            for nat in (internet["nats"] if internet else [])
        ],
        "internet": None
        if internet is None
        else {
            "namespace": internet["namespace"],
            "running": netlink.namespace_exists(internet["namespace"]),
            "public": [
                {"host": u["host"], "address": _ip(u["address"])} for u in internet["public"]
            ],
        },
    }


def _router_status(host: dict[str, Any]) -> dict[str, Any] | None:
    """The host's router as its API reports it, or None if it is not running."""
    try:
        status: dict[str, Any] = ApiClient(host_api_socket(host["dir"]), timeout=2).get("/status")
    except UserError:
        return None
    return status


def set_link(name: str | None, a: str, b: str, action: str, value: str | None = None) -> str:
    """Take a link down or up, or give it loss or a rate cap, in both directions."""
    require_root()
    name = resolve_name(name)
    directory = lab_root() / name
    record = LabRecord.load(directory)
    link = record.find_link(a, b)
    namespaces = {h["name"]: h["namespace"] for h in record.hosts}
    ends = [
        (namespaces[link["a"]], _link_ifname(link["b"])),
        (namespaces[link["b"]], _link_ifname(link["a"])),
    ]
    if action in ("up", "down"):
        if value is not None:
            raise UserError(f"`link {a} {b} {action}` takes no value")
        for namespace, ifname in ends:
            with netlink.namespace(namespace) as ns:
                ns.set_state(ifname, up=action == "up")
        link["up"] = action == "up"
        result = f"link {a}-{b} {action}"
    elif action in ("loss", "rate"):
        if value is None:
            raise UserError(
                f"`link {a} {b} {action}` needs a value, e.g. "
                + ("loss 20" if action == "loss" else "rate 10mbit (or rate none)")
            )
        if action == "loss":
            try:
                link["loss"] = check_loss(float(value.rstrip("%")))
            except ValueError:
                raise UserError(f"bad loss {value!r}: a percentage from 0 to 100") from None
        else:
            link["rate"] = None if value.lower() in ("none", "off") else parse_rate(value)
        for namespace, ifname in ends:
            _apply_faults(namespace, ifname, link["loss"], link["rate"])
        result = (
            f"link {a}-{b} loss {link['loss']:g}%"
            if action == "loss"
            else f"link {a}-{b} rate {format_rate(link['rate']) if link['rate'] else 'none'}"
        )
    else:
        raise UserError(f"unknown link action {action!r}: use down, up, loss PCT or rate RATE")
    record.save(directory)
    return result


def exec_target(name: str | None, target: str) -> tuple[str, dict[str, str]]:
    """The namespace of a host or container of the lab, and the environment to run in it."""
    name = resolve_name(name)
    record = LabRecord.load(lab_root() / name)
    for host in record.hosts:
        if host["name"] == target:
            return str(host["namespace"]), host_environment(host)
    for container in record.containers:
        if container["name"] == target:
            return str(container["namespace"]), {}
    routers = {}  # the NAT routers and the internet router, for `lab exec n1-nat conntrack -L`
    if record.internet is not None:
        routers[INTERNET] = record.internet["namespace"]
        for nat in record.internet["nats"]:
            routers[nat_router_name(nat["host"])] = nat["namespace"]
    if target in routers:
        return str(routers[target]), {}
    known = [e["name"] for e in record.hosts + record.containers] + list(routers)
    raise UserError(
        f"no host or container named {target!r} in lab {name} "
        f"(there are: {', '.join(known[:12])}{'...' if len(known) > 12 else ''})"
    )


def exec_argv(
    name: str | None, target: str, command: tuple[str, ...]
) -> tuple[list[str], dict[str, str]]:
    """The command line running `command` in a host or container, and its environment:
    `ip netns exec` for namespaces, `docker exec` for the containers of a Docker lab."""
    name = resolve_name(name)
    record = LabRecord.load(lab_root() / name)
    for container in record.containers:
        if container["name"] == target and container.get("docker"):
            host = record.find_host(container["host"])
            return lab_docker.exec_command(host["dir"], target, command), {}
    namespace, env = exec_target(name, target)
    return ["ip", "netns", "exec", namespace, *command], env
