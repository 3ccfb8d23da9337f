"""IPv6 isolation on the real kernel: a container that plays router (Router Advertisements, a
rogue DHCP server) or answers Neighbor Discovery for another's address is dropped and counted,
IPv6 subnets stay apart, and a container without an IPv6 address sends no IPv6.

The attacks are hand-built frames (tests/net/nd_frames.py) sent from a container's namespace
through a raw socket, at victims whose kernels would take them: accept_ra is forced to 1 in
the victims, and each victim first learns the real neighbour entries the attacker tries to
overwrite. Every attack is followed by an ordinary ping along the same path, so a frame the
bridge let through has reached its victim before the victim is looked at.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest

from meshnet.api.client import ApiClient
from meshnet.dataplane.kernel.nftables import Port
from tests.net import nd_frames
from tests.net.conftest import ns_run
from tests.net.test_ipam import new_namespace
from tests.net.test_ipam6 import attach, ping6
from tests.net.test_mesh import api, wait_for

ND_FRAMES = Path(__file__).with_name("nd_frames.py")
ROGUE_PREFIX = "2001:db8:66::/64"
CONTROL_PORT = 6767
LISTENER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
print(s.recvfrom(512)[1][1])  # the source port of the first datagram that arrives
"""
SENDER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
for port in sys.argv[3:]:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind(("", int(port)))
    s.sendto(b"offer", (sys.argv[1], int(sys.argv[2])))
"""


@pytest.fixture(autouse=True)
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHNET_HEARTBEAT_INTERVAL", "1")


class Container:
    """A dual-stack (or IPv6-only) container of the lab, and what an attacker needs of it."""

    def __init__(self, state: dict[str, Any], client: ApiClient, name: str, *specs: str) -> None:
        self.namespace = new_namespace(state, name)
        self.addresses = attach(client, self.namespace, *specs)
        link = json.loads(ns_run(self.namespace, "ip", "-j", "link", "show", "ethwe").stdout)
        self.mac: str = link[0]["address"]

    @property
    def ip6(self) -> IPv6Address:
        return next(a.ip for a in self.addresses if isinstance(a.ip, IPv6Address))

    @property
    def link_local(self) -> IPv6Address:
        out = ns_run(
            self.namespace, "ip", "-j", "-6", "addr", "show", "dev", "ethwe", "scope", "link"
        )
        # ``ip -j`` leaves an empty entry for each address the scope filter left out.
        found = [a["local"] for a in json.loads(out.stdout)[0]["addr_info"] if "local" in a]
        return IPv6Address(found[0])

    def neighbour(self, address: IPv6Address) -> str:
        """The MAC this container's kernel holds for ``address`` ('' for none)."""
        out = ns_run(
            self.namespace, "ip", "-j", "-6", "neigh", "show", str(address), "dev", "ethwe"
        )
        entries = json.loads(out.stdout or "[]")
        return str(entries[0].get("lladdr", "")) if entries else ""

    def routes6(self) -> str:
        return ns_run(self.namespace, "ip", "-6", "route", "show").stdout

    def addresses6(self) -> str:
        return ns_run(self.namespace, "ip", "-6", "-o", "addr", "show", "dev", "ethwe").stdout

    def send(self, *frames: bytes) -> None:
        result = ns_run(
            self.namespace, sys.executable, str(ND_FRAMES), "ethwe", *(f.hex() for f in frames)
        )
        assert result.returncode == 0, result.stderr


def first_source_port(
    sender: Container, receiver: Container, address: str, port: int, server_port: int
) -> int:
    """``sender`` sends a datagram to ``address``:``port`` from a DHCP server's port, then one
    from an ordinary port: the source port of the first that ``receiver`` gets."""
    listener = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            receiver.namespace,
            sys.executable,
            "-c",
            LISTENER,
            address,
            str(port),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        sent = ns_run(
            sender.namespace,
            sys.executable,
            "-c",
            SENDER,
            address,
            str(port),
            str(server_port),
            str(CONTROL_PORT),
        )
        assert sent.returncode == 0, sent.stderr
        return int(listener.stdout.readline())
    finally:
        listener.kill()
        listener.wait()


def ping_link_local(source: Container, target: Container) -> bool:
    address = f"{target.link_local}%ethwe"
    return ns_run(source.namespace, "ping", "-6", "-c", "1", "-W", "1", address).returncode == 0


def resolves(source: Container, target: Container) -> bool:
    """Whether ``source`` finds ``target``'s MAC for its link-local address (by pinging it)."""
    ping_link_local(source, target)
    return source.neighbour(target.link_local) == target.mac


def dropped(client: ApiClient, counter: str) -> int:
    return int(client.get("/status/ramps")["dropped"][counter])


def spoofed(client: ApiClient) -> int:
    return dropped(client, "spoofed")


def dns_address6(client: ApiClient) -> IPv6Address | None:
    for listen in client.get("/status/dns")["listen_addresses"]:
        address = ipaddress.ip_interface(listen).ip
        if isinstance(address, IPv6Address):
            return address
    return None


def test_a_container_can_neither_advertise_a_router_nor_answer_for_another_address(
    make_lab: Any,
) -> None:
    state = make_lab("full", hosts=2, containers=0)
    h1, h2 = api(state, "h1"), api(state, "h2")
    attacker = Container(state, h1, "h1-x6")
    victim = Container(state, h1, "h1-v6")  # on the attacker's bridge
    remote = Container(state, h2, "h2-w6")  # across the overlay
    claimed = Container(state, h2, "h2-c6")  # whose addresses the attacker claims
    for target in (victim, remote):
        forced = ns_run(target.namespace, "sysctl", "-w", "net.ipv6.conf.ethwe.accept_ra=1")
        assert forced.returncode == 0, forced.stderr
        assert (
            ns_run(target.namespace, "sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip()
            == "0"
        )

    # Ordinary IPv6 works, Neighbor Discovery included (own addresses, link-local ones too):
    # and the victims learn the real entries the attacks try to overwrite.
    for source, target in (
        (victim, claimed),
        (remote, claimed),
        (attacker, victim),
        (attacker, remote),
    ):
        wait_for(
            lambda s=source, t=target: ping6(s.namespace, t.ip6),
            what=f"ping -6 from {source.namespace} to {target.namespace}",
        )
    assert ping6(victim.namespace, claimed.ip6) and ping6(victim.namespace, attacker.ip6)
    # Link-local addresses resolve (the echo itself is not let through: see the next test),
    # once the target's is no longer tentative.
    wait_for(lambda: resolves(victim, claimed), what="the victim to resolve a link-local address")
    # The host's DNS server, over IPv6: the address a spoofed answer would hijack.
    dns6 = wait_for(lambda: dns_address6(h1), what="h1's IPv6 DNS address")
    lookup = ns_run(victim.namespace, "dig", "+short", "+time=2", f"@{dns6}", "h2-c6.meshnet.local")
    assert lookup.returncode == 0, lookup
    host = next(h for h in state["hosts"] if h["name"] == "h1")
    host_mac = json.loads(ns_run(host["namespace"], "ip", "-j", "link", "show", "meshnet").stdout)
    host_mac = host_mac[0]["address"]
    # The kernel's link-local address is the one the bridge's rules derive from the MAC.
    assert attacker.link_local == Port("x", (), attacker.mac).link_local()
    real = {
        (victim, claimed.ip6): claimed.mac,
        (victim, claimed.link_local): claimed.mac,
        (victim, attacker.ip6): attacker.mac,
        (victim, dns6): host_mac,
        (remote, claimed.ip6): claimed.mac,
    }
    for (holder, address), mac in real.items():
        assert holder.neighbour(address) == mac, (holder.namespace, address)
    before = {t.namespace: (t.routes6(), t.addresses6()) for t in (victim, remote)}
    assert "default" not in before[victim.namespace][0]
    counted = spoofed(h1)

    all_nodes = nd_frames.multicast_mac(nd_frames.ALL_NODES)
    attacks = [
        # "I am your default router, and here is a prefix to take an address from."
        nd_frames.router_advertisement(attacker.mac, attacker.link_local, ROGUE_PREFIX),
        # "The other container's address is at my MAC": to the victim, and to every node.
        nd_frames.neighbor_advertisement(
            attacker.mac, attacker.ip6, victim.ip6, victim.mac, claimed.ip6
        ),
        nd_frames.neighbor_advertisement(
            attacker.mac, attacker.link_local, nd_frames.ALL_NODES, all_nodes, claimed.ip6
        ),
        # Its link-local address too, and the host's DNS address.
        nd_frames.neighbor_advertisement(
            attacker.mac, attacker.ip6, victim.ip6, victim.mac, claimed.link_local
        ),
        nd_frames.neighbor_advertisement(attacker.mac, attacker.ip6, victim.ip6, victim.mac, dns6),
        # Its own address, but at another container's MAC (traffic for it sent elsewhere).
        nd_frames.neighbor_advertisement(
            attacker.mac, attacker.ip6, victim.ip6, victim.mac, attacker.ip6, lladdr=claimed.mac
        ),
    ]
    attacker.send(*attacks)
    # The same path, after the attacks (across the overlay, so the local victim's copies went
    # out before): whatever the bridge let through has arrived.
    assert ping6(attacker.namespace, remote.ip6)

    for (holder, address), mac in real.items():
        assert holder.neighbour(address) == mac, (holder.namespace, address)
    for target in (victim, remote):
        routes, addresses = target.routes6(), target.addresses6()
        assert "default" not in routes and "2001:db8:66" not in routes + addresses, routes
        assert (routes, addresses) == before[target.namespace]
    assert spoofed(h1) >= counted + len(attacks)

    # A rogue DHCP or DHCPv6 server's offers to a client's port never arrive; the ordinary
    # datagram sent after each does (and along the same path, so it cannot overtake).
    counted = spoofed(h1)
    ip4 = str(next(a.ip for a in victim.addresses if a.version == 4))
    assert first_source_port(attacker, victim, ip4, 68, 67) == CONTROL_PORT
    assert first_source_port(attacker, victim, str(victim.ip6), 546, 547) == CONTROL_PORT
    assert spoofed(h1) >= counted + 2
    # Ordinary IPv6 still works both ways after it all.
    assert ping6(victim.namespace, claimed.ip6) and ping6(remote.namespace, attacker.ip6)
    assert ping6(attacker.namespace, victim.ip6)


def test_ipv6_subnets_are_isolated_and_a_container_without_ipv6_sends_none(
    make_lab: Any,
) -> None:
    state = make_lab("full", hosts=2, containers=0)
    h1, h2 = api(state, "h1"), api(state, "h2")
    ipam6 = h1.get("/status/ipam")["ipv6"]
    default = IPv6Network(ipam6["default_subnet"])
    # Two /64s besides the default: one host holds nothing of either, and gets a donation
    # for each from the other (the second once the donor's interval for it has passed).
    others = (n for n in IPv6Network(ipam6["range"]).subnets(new_prefix=64) if n != default)
    s1, s2 = next(others), next(others)
    a1 = Container(state, h1, "h1-a6", f"net:{s1}")
    a2 = Container(state, h2, "h2-a6", f"net:{s1}")
    b1 = Container(state, h1, "h1-b6", f"net:{s2}")
    b2 = Container(state, h2, "h2-b6", f"net:{s2}")
    wait_for(lambda: ping6(a1.namespace, a2.ip6), what="a1 to reach a2 over IPv6")
    wait_for(lambda: ping6(b2.namespace, b1.ip6), what="b2 to reach b1 over IPv6")

    # The other subnet, with a route added by hand: dropped on the bridge.
    for container in (a1, a2):
        added = ns_run(container.namespace, "ip", "-6", "route", "add", str(s2), "dev", "ethwe")
        assert added.returncode == 0, added.stderr
    before = dropped(h1, "isolated")
    assert not ping6(a1.namespace, b1.ip6)  # on the same host
    assert not ping6(a1.namespace, b2.ip6)  # across the overlay
    # Link-local addresses belong to no subnet: between containers they carry only Neighbor
    # Discovery (and MLD), whatever the subnets (on the same host and across).
    for target in (b1, b2, a2):
        assert not ping_link_local(a1, target)
    assert dropped(h1, "isolated") > before

    # An address of the other subnet added by hand: the bridge knows what was attached.
    stolen = s1[0x99]
    added = ns_run(b1.namespace, "ip", "-6", "addr", "add", f"{stolen}/64", "dev", "ethwe", "nodad")
    assert added.returncode == 0, added.stderr
    before = spoofed(h1)
    assert not ping6(b1.namespace, a1.ip6)
    assert spoofed(h1) > before

    # Attached without an IPv6 address: no IPv6 at all, whatever it adds by hand.
    v4 = Container(state, h1, "h1-z4", "net:default")
    assert all(a.version == 4 for a in v4.addresses)
    added = ns_run(
        v4.namespace, "ip", "-6", "addr", "add", f"{s1[0x77]}/64", "dev", "ethwe", "nodad"
    )
    assert added.returncode == 0, added.stderr
    before = dropped(h1, "protocol")
    assert not ping6(v4.namespace, a1.ip6)
    assert not ping_link_local(v4, a1)
    assert dropped(h1, "protocol") > before

    assert ping6(a1.namespace, a2.ip6) and ping6(b2.namespace, b1.ip6)  # unharmed
