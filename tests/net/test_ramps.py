"""On and off ramps and isolation on the real kernel: expose/hide, masquerade, subnets kept
apart on the bridge, and nftables left as it was; IPv4 and IPv6.

One lab of two hosts (h1, h2) with one container each, shared by the tests of this module; each
test hides what it exposes. Extra namespaces (a server outside the overlay, containers in other
subnets) are written to the lab's journal before they are made, so `lab down` removes them
whatever happens; the tests remove them too.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from meshnet.api.client import ApiClient
from meshnet.dataplane.kernel import netlink
from meshnet.lab import lab as lablib
from meshnet.lab import topology
from tests.conftest import run_meshnet, unique_lab_name
from tests.net.conftest import can_ping, ns_run
from tests.net.test_ipam import new_namespace
from tests.net.test_mesh import wait_for

SERVER_PORT = 7777
ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(512)
    s.sendto(peer[0].encode(), peer)  # what the server saw as the source
"""
ECHO_CLIENT = """
import socket, sys, time
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
for _ in range(4):
    try:
        s.sendto(b"?", (sys.argv[1], int(sys.argv[2])))
        print(s.recv(512).decode())
        break
    except TimeoutError:
        continue
    except OSError:  # no route (yet)
        time.sleep(0.5)
"""


class RampsLab:
    def __init__(self, status: dict[str, Any]) -> None:
        self.state = status
        self.name = status["name"]
        self.hosts = {h["name"]: h for h in status["hosts"]}
        self.containers = {c["name"]: c for c in status["containers"]}

    def client(self, host: str) -> ApiClient:
        return ApiClient(lablib.host_api_socket(self.hosts[host]["dir"]), timeout=45)

    def ns(self, name: str) -> str:
        if name in self.hosts:
            return str(self.hosts[name]["namespace"])
        return str(self.containers[name]["namespace"])

    def address(self, container: str) -> str:
        return str(self.containers[container]["addresses"][0]).split("/")[0]

    def meshnet(self, host: str, *args: str) -> subprocess.CompletedProcess[str]:
        """The command line, as a user on that host runs it."""
        return run_meshnet(*args, env={**os.environ, **lablib.host_environment(self.hosts[host])})

    def nft(self, host: str, *args: str) -> str:
        result = ns_run(self.ns(host), "nft", *args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def dropped(self, host: str) -> dict[str, int]:
        counters: dict[str, int] = self.client(host).get("/status/ramps")["dropped"]
        return counters


@pytest.fixture(scope="module")
def lab() -> Iterator[RampsLab]:
    name = unique_lab_name()
    try:
        lablib.up(name, topology.builtin("full", 2, 1))
        yield RampsLab(lablib.status(name))
    finally:
        if (lablib.lab_root() / name).exists():
            lablib.down(name)


def remove_namespace(namespace: str) -> None:
    for pid in netlink.namespace_pids(namespace):
        os.kill(pid, 9)
    netlink.remove_namespace(namespace)


def link_outside(
    lab: RampsLab, namespace: str, host_ifname: str, prefix: str, *, ipv6: bool = False
) -> None:
    """Join `namespace` (outside the overlay) to h1 by a veth: h1 is PREFIX.1/24, it is
    PREFIX.2/24 and routes the overlay via h1; with `ipv6`, PREFIX::1/64 and PREFIX::2/64 (no
    DAD: usable at once), and no route."""
    first, second = (
        (f"{prefix}::1/64", f"{prefix}::2/64") if ipv6 else (f"{prefix}.1/24", f"{prefix}.2/24")
    )
    with netlink.namespace(lab.ns("h1")) as ns:
        ns.create_veth(host_ifname, "to-h1", namespace, mtu=1500)
        ns.add_address(host_ifname, first)
        ns.set_up(host_ifname)
    with netlink.namespace(namespace) as ns:
        ns.add_address("to-h1", second)
        ns.set_up("to-h1")
        if not ipv6:
            ns.add_route("10.32.0.0/12", "to-h1", gateway=f"{prefix}.1")


def routes(namespace: str, family: str = "-4") -> str:
    return ns_run(namespace, "ip", family, "route").stdout


def can_ping6(namespace: str, address: str) -> bool:
    return ns_run(namespace, "ping", "-6", "-c", "1", "-W", "1", address).returncode == 0


def echo(namespace: str, address: str) -> str:
    """Ask the echo server at ``address`` from ``namespace``: the source address it saw."""
    result = ns_run(namespace, sys.executable, "-c", ECHO_CLIENT, address, str(SERVER_PORT))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def start_echo_server(namespace: str, address: str) -> subprocess.Popen[str]:
    server = subprocess.Popen(
        [
            "ip", "netns", "exec", namespace, sys.executable, "-c",
            textwrap.dedent(ECHO_SERVER), address, str(SERVER_PORT),
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    return server


def test_expose_lets_the_host_reach_a_container_on_another_host_until_hide(lab: RampsLab) -> None:
    h1, target = lab.ns("h1"), lab.address("h2-c1")
    dns_address = lab.client("h1").get("/status/dns")["listen"].split("/")[0]
    assert not can_ping(h1, target)  # the DNS address is on the bridge, but closed to replies

    # Without arguments, as attach: the default subnet of each family (the IPv6 ring is on).
    exposed = lab.meshnet("h1", "expose", "--hostname", "gateway1")
    assert exposed.returncode == 0, exposed.stderr
    address, address6 = exposed.stdout.split()
    gateway, gateway6 = address.split("/")[0], address6.split("/")[0]
    assert address.endswith("/12") and address6.endswith("/64")
    assert wait_for(lambda: can_ping(h1, target), timeout=10, what="h1 to reach h2-c1")
    again = lab.meshnet("h1", "expose", "--hostname", "gateway1")  # harmless: the same addresses
    assert (again.returncode, again.stdout.split()) == (0, [address, address6])
    assert f"default via {gateway} dev ethwe" in routes(lab.ns("h1-c1"))
    assert "default" not in routes(lab.ns("h1-c1"), "-6")  # an IPv4-only container
    status = lab.meshnet("h1", "status").stdout
    name = "gateway1.meshnet.local."
    assert f"Exposed: {address} ({name}), {address6} ({name})" in status
    assert "Isolation: on" in status
    assert wait_for(
        lambda: len(lab.client("h2").post("/dns/lookup", {"name": "gateway1"})["addresses"]) == 2,
        timeout=10,
        what="the exposed name on h2",
    )
    assert sorted(
        lab.client("h2").post("/dns/lookup", {"name": "gateway1"})["addresses"]
    ) == sorted([gateway, gateway6])
    assert "table inet meshnet\n" in lab.nft("h1", "list", "tables")

    hidden = lab.meshnet("h1", "hide")
    assert (hidden.returncode, hidden.stdout.split()) == (0, [address, address6])
    assert not can_ping(h1, target)
    # The DNS server's address keeps its route to the subnet; the container loses its gateway.
    assert f"10.32.0.0/12 dev meshnet proto kernel scope link src {dns_address}" in routes(h1)
    assert "default" not in routes(lab.ns("h1-c1"))
    assert lab.client("h1").post("/dns/lookup", {"name": "gateway1"})["addresses"] == []
    assert "table inet meshnet\n" not in lab.nft("h1", "list", "tables")
    repeated = lab.meshnet("h1", "hide")
    assert (repeated.returncode, repeated.stdout) == (0, "")


def test_off_ramp_masquerades_to_the_underlay_address_unless_told_not_to(lab: RampsLab) -> None:
    server_ns = new_namespace(lab.state, "srv")
    server = None
    inside = None
    try:
        # The route back is only for --without-masquerade (to containers' own addresses).
        link_outside(lab, server_ns, "to-srv", "192.168.250")
        server = start_echo_server(server_ns, "192.168.250.2")
        container, own = lab.ns("h1-c1"), lab.address("h1-c1")
        assert echo(container, "192.168.250.2") == ""  # no way out before expose

        lab.client("h1").post("/expose", {"addresses": []})
        assert echo(container, "192.168.250.2") == "192.168.250.1"
        # Between containers, never masqueraded.
        inside = start_echo_server(lab.ns("h2-c1"), lab.address("h2-c1"))
        assert echo(container, lab.address("h2-c1")) == own

        lab.client("h1").post("/expose", {"addresses": [], "masquerade": False})
        assert echo(container, "192.168.250.2") == own
        assert lab.client("h1").get("/status")["exposed"][0]["masquerade"] is False
    finally:
        for process in (server, inside):
            if process is not None:
                process.kill()
                process.wait()
        lab.client("h1").post("/hide", {"addresses": []})
        remove_namespace(server_ns)


def test_subnets_are_isolated_on_the_bridge_even_with_hand_added_addresses(
    lab: RampsLab,
) -> None:
    made = {}
    try:
        for name, host, subnet in (
            ("a1", "h1", "10.32.1.0/24"),
            ("a2", "h2", "10.32.1.0/24"),
            ("b1", "h1", "10.32.2.0/24"),
            ("b2", "h2", "10.32.2.0/24"),
        ):
            made[name] = new_namespace(lab.state, name)
            result = lab.client(host).post(
                "/attach", {"container": made[name], "addresses": [f"net:{subnet}"]}
            )
            made[name + "-ip"] = result["addresses"][0].split("/")[0]
        a1, a2, b1, b2 = (made[n] for n in ("a1", "a2", "b1", "b2"))
        ip = {n: made[n + "-ip"] for n in ("a1", "a2", "b1", "b2")}

        # The same subnet, across hosts: reachable.
        assert wait_for(lambda: can_ping(a1, ip["a2"]), timeout=10, what="a1 to reach a2")
        assert wait_for(lambda: can_ping(b2, ip["b1"]), timeout=10, what="b2 to reach b1")

        # Other subnets, with a route added by hand: dropped on the bridge.
        for namespace in (a1, a2):
            added = ns_run(namespace, "ip", "route", "add", "10.32.2.0/24", "dev", "ethwe")
            assert added.returncode == 0, added.stderr
        before = lab.dropped("h1")["isolated"]
        assert not can_ping(a1, ip["b1"])  # on the same host
        assert not can_ping(a1, ip["b2"])  # across the sleeve
        assert lab.dropped("h1")["isolated"] > before

        # An address of the other subnet added by hand: the bridge knows what was attached.
        assert ns_run(b1, "ip", "addr", "add", "10.32.1.99/24", "dev", "ethwe").returncode == 0
        assert ns_run(b2, "ip", "addr", "add", "10.32.1.98/24", "dev", "ethwe").returncode == 0
        spoofed = lab.dropped("h1")["spoofed"], lab.dropped("h2")["spoofed"]
        assert not can_ping(b1, ip["a1"])
        assert not can_ping(b2, ip["a1"])
        assert lab.dropped("h1")["spoofed"] > spoofed[0]
        assert lab.dropped("h2")["spoofed"] > spoofed[1]
        assert wait_for(lambda: can_ping(a1, ip["a2"]), timeout=5, what="a1 to still reach a2")

        # The receiving host checks too: with h2's rules gone, h1 still keeps b2 from a1.
        assert ns_run(b2, "ip", "addr", "del", "10.32.1.98/24", "dev", "ethwe").returncode == 0
        assert ns_run(b2, "ip", "route", "add", "10.32.1.0/24", "dev", "ethwe").returncode == 0
        lab.nft("h2", "delete", "table", "bridge", "meshnet")
        before = lab.dropped("h1")["isolated"]
        assert not can_ping(b2, ip["a1"])
        assert lab.dropped("h1")["isolated"] > before
        # Any change puts h2's table back (attaching again changes nothing else).
        lab.client("h2").post("/attach", {"container": b2, "addresses": []})
        assert "table bridge meshnet" in lab.nft("h2", "list", "tables")
    finally:
        for name in ("a1", "a2", "b1", "b2"):
            if name in made:
                remove_namespace(made[name])


def test_containers_of_every_subnet_resolve_names_through_their_hosts_dns(lab: RampsLab) -> None:
    made = {}
    try:
        for name, host, subnet in (("d1", "h1", "10.32.3.0/24"), ("e2", "h2", "10.32.4.0/24")):
            made[name] = new_namespace(lab.state, name)
            body = {"container": made[name], "addresses": [f"net:{subnet}"], "name": name}
            lab.client(host).post("/attach", body)
        dns = {h: lab.client(h).get("/status/dns")["listen"].split("/")[0] for h in ("h1", "h2")}
        for name, host in (("d1", "h1"), ("e2", "h2")):
            # Outside its subnet: reached by a route of its own, through the bridge's exemption.
            route = ns_run(made[name], "ip", "-4", "route", "show", f"{dns[host]}/32").stdout
            assert "dev ethwe" in route, routes(made[name])
            for other in ("h1-c1", "h2-c1", "d1", "e2"):
                answer = ns_run(
                    made[name], "dig", "+short", "+time=2", "+tries=2", f"@{dns[host]}",
                    f"{other}.meshnet.local",
                )  # fmt: skip
                assert answer.returncode == 0 and answer.stdout.strip(), (name, other, answer)
        # The exemption is for DNS alone: the subnets stay apart (a hand-added route does not
        # help), and the DNS address answers nothing else.
        e2_ip = ns_run(made["d1"], "dig", "+short", f"@{dns['h1']}", "e2.meshnet.local").stdout
        added = ns_run(made["d1"], "ip", "route", "add", "10.32.4.0/24", "dev", "ethwe")
        assert added.returncode == 0, added.stderr
        assert not can_ping(made["d1"], e2_ip.strip())
        assert not can_ping(made["d1"], dns["h1"])
    finally:
        for namespace in made.values():
            remove_namespace(namespace)


def test_traffic_routed_in_from_outside_leaves_from_the_exposed_address_unless_no_masq_local(
    lab: RampsLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    client_ns = new_namespace(lab.state, "out")
    servers = []
    try:
        link_outside(lab, client_ns, "to-out", "192.168.251")
        local, remote = lab.address("h1-c1"), lab.address("h2-c1")
        servers = [start_echo_server(lab.ns(c), lab.address(c)) for c in ("h1-c1", "h2-c1")]
        exposed = lab.meshnet("h1", "expose")
        assert exposed.returncode == 0, exposed.stderr
        gateway = exposed.stdout.strip().split("/")[0]
        # Replies must come back through h1: both containers see h1's exposed address.
        assert echo(client_ns, local) == gateway
        assert echo(client_ns, remote) == gateway

        assert lab.meshnet("h1", "stop").returncode == 0
        monkeypatch.setenv("MESHNET_NO_MASQ_LOCAL", "1")
        lablib.start_router(lab.name, "h1")  # exposes again what ramps.json holds
        assert lab.client("h1").get("/status/ramps")["masquerade_local"] is False
        # Both families: the IPv6 address is back on the bridge too.
        again = [e["address"] for e in lab.client("h1").get("/status")["exposed"]]
        assert again == exposed.stdout.split()
        on_bridge = ns_run(lab.ns("h1"), "ip", "-6", "addr", "show", "dev", "meshnet").stdout
        assert f"inet6 {again[1]} " in on_bridge
        # At once: the bridge kept its MAC, so h1-c1's ARP entry for its gateway still holds.
        assert echo(client_ns, local) == "192.168.251.2"
        assert wait_for(lambda: echo(client_ns, remote) == gateway, timeout=10,
                        what="h2-c1 to still see h1's exposed address")  # fmt: skip
    finally:
        for server in servers:
            server.kill()
            server.wait()
        if lab.client("h1").get("/status")["exposed"]:
            lab.client("h1").post("/hide", {"addresses": []})
        remove_namespace(client_ns)
    assert lab.meshnet("h1", "stop").returncode == 0
    monkeypatch.delenv("MESHNET_NO_MASQ_LOCAL")
    lablib.start_router(lab.name, "h1")


def inet_drops(lab: RampsLab, host: str, address: str) -> int:
    """Packets the ramps' input guard of an exposed address dropped."""
    table = lab.nft(host, "list", "table", "inet", "meshnet")
    line = next(x for x in table.splitlines() if f"daddr {address} " in x and "drop" in x)
    return int(line.split("packets")[1].split()[0])


def test_ipv6_expose_reaches_masquerades_snats_isolates_and_hides(lab: RampsLab) -> None:
    made: dict[str, str] = {}
    servers: list[subprocess.Popen[str]] = []
    h1, outside = lab.ns("h1"), "fd99:250"
    try:
        # A dual-stack container on h1 (attach without addresses: both families, even when
        # its namespace gets the inode of one an earlier test removed without a detach), and
        # an IPv6-only one in another /64 of the IPv6 ring.
        made["dual"] = new_namespace(lab.state, "v6a")
        attached = lab.client("h1").post("/attach", {"container": made["dual"], "addresses": []})
        assert {ipaddress.ip_interface(a).version for a in attached["addresses"]} == {4, 6}
        six = next(ipaddress.IPv6Interface(a) for a in attached["addresses"] if ":" in a)
        range6 = ipaddress.IPv6Network(lab.client("h1").get("/status/ipam")["ipv6"]["range"])
        other_subnet = next(n for n in range6.subnets(new_prefix=64) if n != six.network)
        made["other"] = new_namespace(lab.state, "v6b")
        other = lab.client("h1").post(
            "/attach", {"container": made["other"], "addresses": [f"net:{other_subnet}"]}
        )
        assert ipaddress.ip_interface(other["addresses"][0]).network == other_subnet
        made["srv"] = new_namespace(lab.state, "v6s")  # a server outside the overlay
        link_outside(lab, made["srv"], "to-v6s", outside, ipv6=True)
        servers.append(start_echo_server(made["srv"], f"{outside}::2"))
        assert echo(made["dual"], f"{outside}::2") == ""  # no way out before expose

        exposed = lab.meshnet("h1", "expose", "net:default6", "--hostname", "gw6")
        assert exposed.returncode == 0, exposed.stderr
        address6 = ipaddress.IPv6Interface(exposed.stdout.strip())
        gateway6 = str(address6.ip)
        assert address6.network == six.network  # the default IPv6 subnet, from the ring
        owners = lab.client("h1").post("/ipam/owners", {"prefix": f"expose:{six.network}:"})
        assert list(owners["owners"].values()) == [
            [gateway6]
        ]  # held like IPv4 ones: expose:SUBNET:PEER
        assert f"default via {gateway6} dev ethwe" in routes(made["dual"], "-6")
        assert wait_for(lambda: can_ping6(made["dual"], gateway6), timeout=10,
                        what="the container to ping -6 the exposed address")  # fmt: skip
        assert can_ping6(h1, str(six.ip))  # and the host its container, from the exposed address
        assert wait_for(
            lambda: lab.client("h2").post("/dns/lookup", {"name": "gw6"})["addresses"],
            timeout=10,
            what="the exposed name (AAAA) on h2",
        ) == [gateway6]

        # Leaving the overlay: masqueraded to h1's address on the outgoing link.
        assert wait_for(lambda: echo(made["dual"], f"{outside}::2") == f"{outside}::1",
                        timeout=10, what="the masqueraded echo")  # fmt: skip

        # Entering it from outside (routed via h1): from the exposed address.
        added = ns_run(made["srv"], "ip", "-6", "route", "add", str(range6), "via", f"{outside}::1")
        assert added.returncode == 0, added.stderr
        servers.append(start_echo_server(made["dual"], str(six.ip)))
        assert echo(made["srv"], str(six.ip)) == gateway6

        # --without-masquerade: the container's own address leaves (the far side routes back).
        lab.client("h1").post("/expose", {"addresses": ["net:default6"], "masquerade": False})
        assert echo(made["dual"], f"{outside}::2") == str(six.ip)
        lab.client("h1").post("/expose", {"addresses": ["net:default6"], "masquerade": True})

        # Another IPv6 subnet, with a route by hand: the bridge drops it...
        added = ns_run(made["other"], "ip", "-6", "route", "add", gateway6, "dev", "ethwe")
        assert added.returncode == 0, added.stderr
        before = lab.dropped("h1")["isolated"]
        assert not can_ping6(made["other"], gateway6)
        assert lab.dropped("h1")["isolated"] > before
        # ...and without the bridge's rules (and with a route back on the host) the guard of
        # the exposed address still does.
        lab.nft("h1", "delete", "table", "bridge", "meshnet")
        back = ns_run(h1, "ip", "-6", "route", "add", str(other_subnet), "dev", "meshnet")
        assert back.returncode == 0, back.stderr
        try:
            guarded = inet_drops(lab, "h1", gateway6)
            assert not can_ping6(made["other"], gateway6)
            assert inet_drops(lab, "h1", gateway6) > guarded
        finally:
            ns_run(h1, "ip", "-6", "route", "del", str(other_subnet), "dev", "meshnet")
            # Any change puts the bridge's table back (attaching again changes nothing else).
            lab.client("h1").post("/attach", {"container": made["dual"], "addresses": []})
        assert "table bridge meshnet" in lab.nft("h1", "list", "tables")
        assert can_ping6(made["dual"], gateway6)

        hidden = lab.meshnet("h1", "hide", "net:default6")
        assert (hidden.returncode, hidden.stdout.strip()) == (0, str(address6))
        assert not can_ping6(made["dual"], gateway6)
        assert "default" not in routes(made["dual"], "-6")
        assert echo(made["dual"], f"{outside}::2") == ""
        assert gateway6 not in ns_run(h1, "ip", "-6", "addr", "show", "dev", "meshnet").stdout
        assert "table inet meshnet\n" not in lab.nft("h1", "list", "tables")
        assert lab.client("h1").post("/dns/lookup", {"name": "gw6"})["addresses"] == []
        owners = lab.client("h1").post("/ipam/owners", {"prefix": f"expose:{six.network}:"})
        assert owners["owners"] == {}
        # The IPv6 DNS server's address (in the same /64) keeps the subnet's route.
        listen = lab.client("h1").get("/status/dns")["listen_addresses"]
        assert any(ipaddress.ip_interface(a).network == six.network for a in listen)
        assert f"{six.network} dev meshnet" in routes(h1, "-6")
    finally:
        for server in servers:
            server.kill()
            server.wait()
        if lab.client("h1").get("/status")["exposed"]:
            lab.client("h1").post("/hide", {"addresses": []})
        for namespace in made.values():
            remove_namespace(namespace)


def test_stop_and_reset_leave_nftables_as_they_were_before_launch(lab: RampsLab) -> None:
    """Last in this module: it stops both routers."""
    keep = f"{lab.name}_keep"
    chain = " chain c {\n  type filter hook forward priority 0; policy accept;\n"
    theirs = (
        f"table inet {keep} {{\n{chain}  ip saddr 192.0.2.1 drop\n }}\n}}\n"
        f"table bridge {keep} {{\n{chain}  ether saddr 02:00:00:00:00:01 drop\n }}\n}}\n"
    )
    for host in ("h1", "h2"):
        applied = subprocess.run(
            ["ip", "netns", "exec", lab.ns(host), "nft", "-f", "-"],
            input=theirs, capture_output=True, text=True,
        )  # fmt: skip
        assert applied.returncode == 0, applied.stderr
    others = {host: lab.nft(host, "list", "table", "inet", keep) for host in ("h1", "h2")}

    assert lab.meshnet("h1", "stop").returncode == 0
    before_launch = lab.nft("h1", "list", "ruleset")
    assert "meshnet" not in before_launch and keep in before_launch
    lablib.start_router(lab.name, "h1")
    assert lab.meshnet("h1", "expose", "net:10.32.3.0/24").returncode == 0
    tables = lab.nft("h1", "list", "tables")
    for table in ("bridge meshnet", "inet meshnet", "inet meshnet_dns"):
        assert f"table {table}\n" in tables
    assert lab.meshnet("h1", "stop").returncode == 0
    assert lab.nft("h1", "list", "ruleset") == before_launch

    lablib.start_router(lab.name, "h1")  # reset hands h2's addresses to a live peer
    assert lab.meshnet("h2", "expose").returncode == 0
    reset = lab.meshnet("h2", "reset", "--force")
    assert reset.returncode == 0, reset.stderr
    left = lab.nft("h2", "list", "tables").split()
    assert left == ["table", "inet", keep, "table", "bridge", keep]
    assert {host: lab.nft(host, "list", "table", "inet", keep) for host in ("h1", "h2")} == others
    lab.meshnet("h1", "stop")
