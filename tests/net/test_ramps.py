"""On and off ramps and isolation on the real kernel: expose/hide, masquerade, subnets kept
apart on the bridge, and nftables left as it was.

One lab of two hosts (h1, h2) with one container each, shared by the tests of this module; each
test hides what it exposes. Extra namespaces (a server outside the overlay, containers in other
subnets) are written to the lab's journal before they are made, so `lab down` removes them
whatever happens; the tests remove them too.
"""

from __future__ import annotations

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
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(512)
    s.sendto(peer[0].encode(), peer)  # what the server saw as the source
"""
ECHO_CLIENT = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
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


def link_outside(lab: RampsLab, namespace: str, host_ifname: str, prefix: str) -> None:
    """Join `namespace` (outside the overlay) to h1 by a veth: h1 is PREFIX.1, it is PREFIX.2,
    and it routes the overlay via h1."""
    with netlink.namespace(lab.ns("h1")) as ns:
        ns.create_veth(host_ifname, "to-h1", namespace, mtu=1500)
        ns.add_address(host_ifname, f"{prefix}.1/24")
        ns.set_up(host_ifname)
    with netlink.namespace(namespace) as ns:
        ns.add_address("to-h1", f"{prefix}.2/24")
        ns.set_up("to-h1")
        ns.add_route("10.32.0.0/12", "to-h1", gateway=f"{prefix}.1")


def routes(namespace: str) -> str:
    return ns_run(namespace, "ip", "-4", "route").stdout


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

    exposed = lab.meshnet("h1", "expose", "--hostname", "gateway1")
    assert exposed.returncode == 0, exposed.stderr
    address = exposed.stdout.strip()
    gateway = address.split("/")[0]
    assert address.endswith("/12")
    assert wait_for(lambda: can_ping(h1, target), timeout=10, what="h1 to reach h2-c1")
    again = lab.meshnet("h1", "expose", "--hostname", "gateway1")  # harmless: the same address
    assert (again.returncode, again.stdout.strip()) == (0, address)
    assert f"default via {gateway} dev ethwe" in routes(lab.ns("h1-c1"))
    status = lab.meshnet("h1", "status").stdout
    assert f"Exposed: {address} (gateway1.meshnet.local.)" in status
    assert "Isolation: on" in status
    assert wait_for(
        lambda: lab.client("h2").post("/dns/lookup", {"name": "gateway1"})["addresses"],
        timeout=10,
        what="the exposed name on h2",
    ) == [gateway]
    assert "table inet meshnet\n" in lab.nft("h1", "list", "tables")

    hidden = lab.meshnet("h1", "hide")
    assert (hidden.returncode, hidden.stdout.strip()) == (0, address)
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
