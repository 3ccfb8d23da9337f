"""The lab's DNS: each router serves its host's containers, which find it in their resolv.conf.

A container of the lab is a named namespace, so its resolv.conf is /etc/netns/<namespace>/
resolv.conf, which `ip netns exec` (and `meshnet lab exec`) bind-mounts over /etc/resolv.conf.
The file is journaled before it is written; `down` removes /etc/netns/<namespace> with the
namespace.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshnet.api.client import ApiClient
from meshnet.dns.settings import render_resolv_conf
from meshnet.errors import UserError
from meshnet.lab.topology import OVERLAY_VERSIONS

if TYPE_CHECKING:
    from meshnet.lab.record import Journal, LabRecord

ETC_NETNS = Path("/etc/netns")
#: How long a router may take to serve DNS (IPAM gives it its address once the ring is agreed).
READY_TIMEOUT = 30.0


def launch_args(record: LabRecord) -> list[str]:
    """What every router of the lab is launched with: the lab's upstream servers, if any."""
    args: list[str] = []
    for upstream in record.dns_upstreams:
        args += ["--dns-upstream", upstream]
    return args


def resolv_conf_path(namespace: str) -> Path:
    return ETC_NETNS / namespace / "resolv.conf"


def host_dns(
    socket: Path, timeout: float = READY_TIMEOUT, *, ipv6: bool = False
) -> dict[str, Any] | None:
    """A router's `status dns` once it serves (None if it does not within ``timeout``); with
    ``ipv6``, once it serves on an IPv6 address too (the router takes that one from the IPv6
    ring right after its IPv4 one), or as it is at the deadline if it serves at all: an
    IPv6-only container reaches no IPv4 server."""
    client = ApiClient(socket, timeout=5)
    deadline = time.monotonic() + timeout
    while True:
        try:
            status: dict[str, Any] = client.get("/status/dns")
        except UserError:
            status = {}
        listening = status.get("listen_addresses") or []
        if listening and (not ipv6 or any(":" in a for a in listening)):
            return status
        if time.monotonic() >= deadline:
            return status if status.get("listen") else None
        time.sleep(0.1)


def write_resolv_confs(
    record: LabRecord,
    journal: Journal,
    api_socket: Callable[[str], Path],
    progress: Callable[[str], None],
) -> None:
    """Point every container at its host's DNS server (``api_socket(host dir)``): at its
    addresses serving by then of the families the containers have, and in an IPv6-only lab at
    an IPv6 one (dual-stack containers need not wait for it: the IPv4 one serves them)."""
    servers: dict[str, dict[str, Any] | None] = {}
    for c in record.containers:
        host = next(h for h in record.hosts if h["name"] == c["host"])
        if host["name"] not in servers:
            servers[host["name"]] = host_dns(api_socket(host["dir"]), ipv6=record.overlay == "ipv6")
        status = servers[host["name"]]
        if status is None:
            progress(f"DNS on {host['name']} is not serving: {c['name']} gets no resolv.conf")
            continue
        path = resolv_conf_path(c["namespace"])
        journal.record("file", str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        cidrs = status.get("listen_addresses") or [status["listen"]]
        addresses = [cidr.split("/")[0] for cidr in cidrs]
        # Only what the container can reach: dig, unlike the C library, says so for each other.
        reachable = [a for a in addresses if _version(a) in OVERLAY_VERSIONS[record.overlay]]
        tmp.write_text(render_resolv_conf(reachable or addresses, status["domain"]))
        tmp.replace(path)
    if servers:
        progress("containers use their host's DNS server")


def _version(address: str) -> int:
    return 6 if ":" in address else 4
