"""Dual-stack containers on the real kernel: the IPv6 ring, addresses usable at once, IPv6
across a relay, IPv6-only containers, persistence, rmpeer."""

from __future__ import annotations

import ipaddress
import itertools
import os
import signal
from typing import Any

import pytest

from meshnet.api.client import ApiClient
from meshnet.constants import ALLOCATE_TIMEOUT
from meshnet.lab import lab as lablib
from tests.conftest import run_meshnet
from tests.net.conftest import ns_run
from tests.net.test_ipam import new_namespace
from tests.net.test_mesh import MESHNET, api, daemon_pid, wait_for

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@pytest.fixture(autouse=True)
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHNET_HEARTBEAT_INTERVAL", "1")


def attach(client: ApiClient, namespace: str, *specs: str) -> list[Interface]:
    patient = ApiClient(client.socket_path, timeout=ALLOCATE_TIMEOUT + 15)
    result = patient.post("/attach", {"container": namespace, "addresses": list(specs)})
    return [ipaddress.ip_interface(a) for a in result["addresses"]]


def ipv6_lines(namespace: str, device: str = "ethwe") -> list[str]:
    """``ip -6 addr`` lines of the global addresses (link-local ones left out)."""
    out = ns_run(namespace, "ip", "-o", "-6", "addr", "show", "dev", device, "scope", "global")
    return out.stdout.splitlines()


def ping6(namespace: str, address: ipaddress.IPv6Address) -> bool:
    return ns_run(namespace, "ping", "-6", "-c", "1", "-W", "1", str(address)).returncode == 0


def ring6(client: ApiClient) -> dict[str, list[str]]:
    return {p["name"]: p["ranges"] for p in client.get("/status/ipam")["ipv6"]["peers"]}


def test_dual_stack_containers_across_a_relay_ipv6_only_restart_and_rmpeer(
    make_lab: Any,
) -> None:
    state = make_lab("line", hosts=3, containers=0)
    clients = {h["name"]: api(state, h["name"]) for h in state["hosts"]}

    # No address asked for: one IPv4 and one IPv6 address, both at once.
    c1, c3 = new_namespace(state, "h1-d1"), new_namespace(state, "h3-d1")
    got1, got3 = attach(clients["h1"], c1), attach(clients["h3"], c3)
    assert [a.version for a in got1] == [4, 6] and [a.version for a in got3] == [4, 6], (got1, got3)
    v6_1, v6_3 = got1[1], got3[1]
    assert v6_1.network == v6_3.network and v6_1.network.prefixlen == 64
    assert v6_1.ip != v6_3.ip and v6_1.ip.is_private
    status = clients["h1"].get("/status/ipam")["ipv6"]
    assert status["range"].startswith("fd") and status["range"].endswith("/48")
    assert status["default_subnet"] == str(v6_1.network)
    # Usable the moment attach returns: no duplicate address detection, never "tentative".
    lines = ipv6_lines(c1)
    assert any(str(v6_1) in line for line in lines), lines
    assert all("tentative" not in line for line in lines) and "nodad" in lines[0]
    routes = ns_run(c1, "ip", "-6", "route", "show", "dev", "ethwe").stdout
    assert str(v6_1.network) in routes, routes
    accept_ra = ns_run(c1, "sysctl", "-n", "net.ipv6.conf.ethwe.accept_ra").stdout.strip()
    assert accept_ra == "0"
    # Every seed peer (the ones the consensus divided both rings among: which hosts those are
    # depends on who agreed first) owns part of the default /64 and asked nobody for space.
    seed = set(status["seed"])
    assert seed == set(clients["h1"].get("/status/ipam")["seed"])
    for client in clients.values():
        mine = client.get("/status/ipam")
        if mine["name"] in seed:
            assert mine["ipv6"]["counters"]["requests_sent"] == 0, mine["name"]

    # h1's and h3's containers over IPv6, through h2 (Neighbor Discovery across hosts).
    wait_for(lambda: ping6(c1, v6_3.ip), what="ping -6 from h1's container to h3's")
    assert ping6(c3, v6_1.ip)

    # An IPv6-only container on h2, reaching both.
    c2 = new_namespace(state, "h2-d6")
    only6 = attach(clients["h2"], c2, "net:default6")
    assert [a.version for a in only6] == [6] and only6[0].network == v6_1.network
    assert not ns_run(c2, "ip", "-o", "-4", "addr", "show", "dev", "ethwe").stdout.strip()
    wait_for(lambda: ping6(c2, v6_1.ip), what="ping -6 from the IPv6-only container")
    assert ping6(c2, v6_3.ip)

    # The host's DNS server has an IPv6 overlay address on the bridge (in the default /64).
    host1 = next(h for h in state["hosts"] if h["name"] == "h1")["namespace"]
    bridge6 = wait_for(lambda: ipv6_lines(host1, "meshnet"), what="the bridge's IPv6 address")
    dns6 = ipaddress.ip_interface(bridge6[0].split()[3])
    assert dns6.network == v6_1.network

    # kill -9 every router and restart them: the IPv6 ring and allocations come back.
    views = [ring6(c) for c in clients.values()]
    assert views[0] == views[1] == views[2] and len(views[0]) == 3
    for host in state["hosts"]:
        os.kill(daemon_pid(state, host["name"]), signal.SIGKILL)
    for host in state["hosts"]:
        lablib.start_router(state["name"], host["name"])
    assert attach(clients["h1"], c1) == got1  # idempotent: the same two addresses
    assert attach(clients["h2"], c2, "net:default6") == only6
    assert [ring6(c) for c in clients.values()] == views
    fresh = attach(clients["h3"], new_namespace(state, "h3-d2"))
    assert fresh[1].ip not in {v6_1.ip, v6_3.ip, only6[0].ip}
    wait_for(lambda: ping6(c1, v6_3.ip), what="ping -6 again after the restart")

    # h3 gone for good: rmpeer hands its IPv6 share (and its IPv4 one) to one heir.
    h3_name = clients["h3"].get("/status")["name"]
    os.kill(daemon_pid(state, "h3"), signal.SIGKILL)
    wait_for(
        lambda: (
            not next(
                p
                for p in clients["h1"].get("/status/ipam")["ipv6"]["peers"]
                if p["name"] == h3_name
            )["reachable"]
        ),
        what="h3 to become unreachable",
    )
    result = run_meshnet(
        "lab", "exec", "--name", state["name"], "h1", "--", *MESHNET, "rmpeer", h3_name
    )
    assert result.returncode == 0, result.stderr
    wait_for(
        lambda: all(h3_name not in ring6(clients[h]) for h in ("h1", "h2")),
        what="h3's IPv6 share to be reclaimed everywhere",
    )
    assert len(ring6(clients["h1"])) == 2


def test_two_more_ipv6_subnets_on_both_hosts_without_a_refused_donation(make_lab: Any) -> None:
    """The two /64s after the default one both lie in one host's share: the other host's
    containers there need two donations from it, asked for back to back. The donor gives a
    peer one range per interval; the asker used to ask at once, be refused, and time out in
    about half the runs (donations_refused: 2). It now waits for the interval itself."""
    state = make_lab("full", hosts=2, containers=0)
    clients = {h: api(state, h) for h in ("h1", "h2")}
    ipam6 = clients["h1"].get("/status/ipam")["ipv6"]
    default = ipaddress.IPv6Network(ipam6["default_subnet"])
    subnets = ipaddress.IPv6Network(ipam6["range"]).subnets(new_prefix=64)
    s1, s2 = itertools.islice((n for n in subnets if n != default), 2)
    for host, client in clients.items():
        for i, subnet in enumerate((s1, s2)):
            (address,) = attach(client, new_namespace(state, f"{host}-s{i}"), f"net:{subnet}")
            assert address.network == subnet, (host, address)
    counters = [c.get("/status/ipam")["ipv6"]["counters"] for c in clients.values()]
    assert sum(c["donations_given"] for c in counters) == 2, counters
    assert sum(c["donations_refused"] for c in counters) == 0, counters
