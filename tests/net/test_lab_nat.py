"""Hosts behind NAT in the lab, with real nftables NAT: what gets out, what gets in, and as whom."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from meshnet.api.client import ApiClient
from meshnet.dataplane.kernel import netlink
from meshnet.lab import lab as lablib
from meshnet.lab import topology as topo
from tests.conftest import unique_lab_name
from tests.net.conftest import can_ping, ns_run

pytestmark = pytest.mark.netns

# p and q are linked; r is public but linked to nobody; n1 and n2 sit behind their NATs.
NAT_LAB = topo.validate(
    topo.Topology(
        hosts=(
            topo.HostSpec("p", ("p-c1",)),
            topo.HostSpec("q", ()),
            topo.HostSpec("r", ()),
            topo.HostSpec("n1", ("n1-c1",), "masquerade"),
            topo.HostSpec("n2", (), "random"),
        ),
        links=(topo.LinkSpec("p", "q"),),
    )
)

# Prints "ready" once bound, then one JSON line [payload, host, port] per datagram.
LISTENER = """
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(5)
print("ready", flush=True)
for _ in range(int(sys.argv[2])):
    data, (host, port) = s.recvfrom(100)
    print(json.dumps([data.decode(), host, port]), flush=True)
"""
SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.sendto(sys.argv[4].encode(), (sys.argv[2], int(sys.argv[3])))
"""


@contextmanager
def udp_listener(namespace: str, port: int, count: int) -> Iterator[list[tuple[str, str, int]]]:
    """What reaches `port` in `namespace` while the block runs: (payload, source, source port)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", LISTENER, str(port), str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    received: list[tuple[str, str, int]] = []
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield received
        out, _ = proc.communicate(timeout=10)
        received.extend(tuple(json.loads(line)) for line in out.splitlines())  # type: ignore[misc]
    finally:
        proc.kill()
        proc.wait()


def send_udp(namespace: str, source_port: int, address: str, port: int, payload: str) -> None:
    result = ns_run(
        namespace, sys.executable, "-c", SENDER, str(source_port), address, str(port), payload
    )
    assert result.returncode == 0, result.stderr


def lab_namespaces(lab: str) -> list[str]:
    """The lab's own namespaces: other labs (other tests, benchmarks) may come and go meanwhile."""
    return [n for n in netlink.list_namespaces() if n.startswith(lablib.namespace_prefix(lab))]


def by_name(state: dict[str, Any], key: str, field: str = "name") -> dict[str, dict[str, Any]]:
    return {entry[field]: entry for entry in state[key]}


def test_natted_hosts_reach_public_hosts_through_their_nat_and_nobody_reaches_them(
    make_lab: Any,
) -> None:
    state = make_lab(NAT_LAB, daemons=False)
    hosts, nats = by_name(state, "hosts"), by_name(state, "nats", "host")
    ns = {name: h["namespace"] for name, h in hosts.items()}
    assert {n: h["nat"] for n, h in hosts.items()} == {
        "p": None,
        "q": None,
        "r": None,
        "n1": "masquerade",
        "n2": "random",
    }
    assert nats["n1"]["namespace"] == lablib.namespace_prefix(state["name"]) + "n1-nat"
    assert state["internet"]["namespace"] == lablib.namespace_prefix(state["name"]) + "internet"
    assert all(nat["running"] for nat in nats.values()) and state["internet"]["running"]
    p_link = next(u["address"] for u in hosts["p"]["underlay"] if u["peer"] == "q")
    q_link = next(u["address"] for u in hosts["q"]["underlay"] if u["peer"] == "p")
    # Out through the NAT and the internet: every address of every public host.
    for natted in ("n1", "n2"):
        for public in ("p", "q", "r"):
            for address in hosts[public]["addresses"]:
                assert can_ping(ns[natted], address), (natted, public, address)
    # Nothing gets in: not to a private address, not from a public host nor another NAT.
    for natted in ("n1", "n2"):
        private = nats[natted]["host_address"]
        assert hosts[natted]["addresses"] == [private]
        for other in ("p", "r", "n1", "n2"):
            if other != natted:
                assert not can_ping(ns[other], private), (other, natted)
    # Public hosts: their [[links]] as in any lab; the internet does not join them.
    assert can_ping(ns["p"], q_link.split("/")[0])
    assert not can_ping(ns["p"], hosts["r"]["addresses"][0])
    assert not can_ping(ns["r"], p_link.split("/")[0])


def test_udp_leaves_as_the_nat_public_address_with_random_ports_only_behind_random(
    make_lab: Any,
) -> None:
    state = make_lab(NAT_LAB, daemons=False)
    hosts, nats = by_name(state, "hosts"), by_name(state, "nats", "host")
    p = hosts["p"]["namespace"]
    target = hosts["p"]["addresses"][0]
    source_ports = (6783, 40001, 40002)
    with udp_listener(p, 7000, 2 * len(source_ports)) as received:
        for natted in ("n1", "n2"):
            for port in source_ports:
                send_udp(hosts[natted]["namespace"], port, target, 7000, f"{natted}:{port}")
    seen = {payload: (source, port) for payload, source, port in received}
    assert len(seen) == 2 * len(source_ports), received
    for port in source_ports:
        # A home router keeps the port when it is free; the address is always the NAT's.
        assert seen[f"n1:{port}"] == (nats["n1"]["public_address"], port)
        assert seen[f"n2:{port}"][0] == nats["n2"]["public_address"]
    # One in ~65000 for each datagram to keep its port by chance: not all three.
    assert any(seen[f"n2:{port}"][1] != port for port in source_ports), seen


def test_routers_behind_nat_join_through_the_public_hosts_and_down_removes_it_all(
    make_lab: Any,
) -> None:
    plan = topo.validate(
        topo.Topology(
            hosts=(topo.HostSpec("p", ()), topo.HostSpec("n1", (), "masquerade")), links=()
        )
    )
    state = make_lab(plan)
    for host in state["hosts"]:
        status = ApiClient(lablib.host_api_socket(host["dir"]), timeout=5).get("/status")
        assert status["peers"] == 2, (host["name"], status)
    lablib.down(state["name"])
    assert lab_namespaces(state["name"]) == []


def test_a_failed_up_removes_the_nat_and_internet_routers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = unique_lab_name()
    built: list[str] = []

    def broken_ruleset(hosts: list[str]) -> str:
        # Applied last: by then the internet and every NAT router exist.
        built.extend(lab_namespaces(name))
        return "this is not nft\n"

    monkeypatch.setattr(lablib, "internet_ruleset", broken_ruleset)
    with pytest.raises(lablib.NftError):
        lablib.up(name, NAT_LAB, daemons=False)
    assert {f"mn-{name}-internet", f"mn-{name}-n1-nat", f"mn-{name}-n2-nat"} <= set(built)
    assert not (lablib.lab_root() / name).exists()
    assert lab_namespaces(name) == []
