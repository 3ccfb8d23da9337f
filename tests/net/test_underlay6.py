"""Routers over IPv6 and mixed underlays, on the real kernel: the sleeve (plain and sealed) and
fastdp over IPv6, a dual-stack underlay, and a relay joining an IPv4-only and an IPv6-only host.

Containers have IPv4 overlay addresses here: what changes is only how routers reach each other.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshnet.lab.topology import HostSpec, LinkSpec, Topology, builtin
from tests.net.conftest import ns_run
from tests.net.test_fastdp import host_ns, wait_paths
from tests.net.test_mesh import api, wait_for
from tests.net.test_overlay import (
    containers,
    dataplane,
    ip_of,
    ping_whole,
    refused_as_too_big,
    shrink_underlay,
    wait_ping,
    wait_pmtu,
)

pytestmark = pytest.mark.netns


@pytest.fixture(autouse=True)
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHNET_HEARTBEAT_INTERVAL", "1")


def families(state: dict[str, Any], host: str, ifname: str) -> set[str]:
    """The families of the global addresses on one of ``host``'s underlay links."""
    out = ns_run(host_ns(state, host), "ip", "-j", "addr", "show", ifname).stdout
    return {
        a["family"]
        for a in json.loads(out)[0]["addr_info"]
        if a.get("scope") == "global"  # an IPv6 link always has its link-local fe80::
    }


def endpoints(state: dict[str, Any], host: str) -> dict[str, str]:
    """Each neighbour's sleeve endpoint as ``host`` shows it, by nickname."""
    return {p["nickname"]: p["endpoint"] for p in dataplane(state, host)["paths"].values()}


def ping_name(state: dict[str, Any], src: str, dst: str, *args: str) -> str:
    c = containers(state)
    done = ns_run(c[src]["namespace"], "ping", "-c3", "-i0.2", "-W2", *args, dst)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def iperf_run(
    state: dict[str, Any], client: str, server: str, *args: str, seconds: int = 2
) -> dict[str, Any]:
    """iperf3's JSON report of ``client`` sending to ``server`` (a container name, resolved by
    DNS; ``args`` such as ``-6`` go to the client)."""
    c = containers(state)
    ns_run(c[server]["namespace"], "iperf3", "-s", "-1", "-D")
    command = ["iperf3", "-J", *args, "-c", server, "-t", str(seconds)]
    result = wait_for(
        lambda: r if (r := ns_run(c[client]["namespace"], *command)).returncode == 0 else None,
        timeout=20,
        what=f"iperf3 {client} -> {server}",
    )
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def iperf(state: dict[str, Any], client: str, server: str, seconds: int = 2) -> float:
    """Bits per second from ``client`` to ``server`` (a container name, resolved by DNS)."""
    report = iperf_run(state, client, server, seconds=seconds)
    return float(report["end"]["sum_received"]["bits_per_second"])


def test_an_ipv6_only_line_relays_by_name_and_uses_fastdp_between_neighbours(
    make_lab: Any,
) -> None:
    state = make_lab(builtin("line", 3, 1, "ipv6"))
    assert families(state, "h2", "to-h1") == {"inet6"}  # no IPv4 underlay at all
    c = containers(state)
    wait_ping(c["h1-c1"], c["h3-c1"])  # h1 and h3 share no link: through h2's router
    out = ping_name(state, "h1-c1", "h3-c1")
    assert ip_of(c["h3-c1"]) in out  # the name resolved to h3-c1's overlay address
    wait_paths(state, "h2", {"h1": "fastdp", "h3": "fastdp"})
    assert endpoints(state, "h2") == {
        "h1": "[fd6d:6573:686e::1]:6783",
        "h3": "[fd6d:6573:686e:1::2]:6783",
    }
    # Reflexive addresses over IPv6 match the hosts' own: nobody thinks it is behind a NAT.
    wait_for(
        lambda: dataplane(state, "h2")["punch"].get("nat") == "none",
        timeout=10,
        what="h2 to see its IPv6 address reported back unchanged",
    )
    fast = dataplane(state, "h2")["fastdp"]
    assert fast["devices"] == ["vxlan-6784", "vxlan6-6784"]
    fdb = ns_run(host_ns(state, "h2"), "bridge", "fdb", "show", "dev", "vxlan6-6784").stdout
    assert "dst fd6d:6573:686e::1" in fdb and "dst fd6d:6573:686e:1::2" in fdb
    connections = api(state, "h1").get("/status/connections")
    established = [x["address"] for x in connections if x["state"] == "established"]
    assert established and all(a.startswith("[fd6d:") for a in established), connections
    assert iperf(state, "h1-c1", "h3-c1") > 0  # relayed: h1's sleeve, h2, h3's sleeve
    assert iperf(state, "h1-c1", "h2-c1") > 0  # neighbours: VXLAN over IPv6


def test_a_password_seals_the_sleeve_over_ipv6(make_lab: Any) -> None:
    state = make_lab(builtin("line", 3, 1, "ipv6"), password="underlay six")
    c = containers(state)
    wait_ping(c["h1-c1"], c["h3-c1"])
    ping_name(state, "h3-c1", "h1-c1")
    assert api(state, "h2").get("/status")["encryption"] is True
    for connection in api(state, "h2").get("/status/connections"):
        if connection["state"] == "established":
            assert connection["encrypted"] and connection["address"].startswith("[fd6d:")
    for path in dataplane(state, "h2")["paths"].values():
        assert path["kind"] == "sleeve" and "encrypted" in path["fastdp"], path
        assert path["endpoint"].startswith("[fd6d:"), path
    assert iperf(state, "h3-c1", "h1-c1") > 0


def test_a_dual_stack_underlay_line(make_lab: Any) -> None:
    state = make_lab(builtin("line", 3, 1, "dual"))
    assert families(state, "h2", "to-h3") == {"inet", "inet6"}
    c = containers(state)
    wait_ping(c["h3-c1"], c["h1-c1"])
    ping_name(state, "h3-c1", "h1-c1")
    wait_paths(state, "h2", {"h1": "fastdp", "h3": "fastdp"})
    # The lab tells routers their neighbours' IPv6 addresses on a dual link.
    assert all(e.startswith("[fd6d:") for e in endpoints(state, "h2").values())
    assert iperf(state, "h1-c1", "h3-c1") > 0


def test_a_relay_joins_an_ipv4_only_and_an_ipv6_only_host(make_lab: Any) -> None:
    mixed = Topology(
        hosts=tuple(HostSpec(h, (f"{h}-c1",)) for h in ("h1", "h2", "h3")),
        links=(LinkSpec("h1", "h2", underlay="ipv4"), LinkSpec("h2", "h3", underlay="ipv6")),
    )
    state = make_lab(mixed)
    assert families(state, "h1", "to-h2") == {"inet"}
    assert families(state, "h3", "to-h2") == {"inet6"}
    c = containers(state)
    wait_ping(c["h1-c1"], c["h3-c1"])
    ping_name(state, "h1-c1", "h3-c1")
    ping_name(state, "h3-c1", "h1-c1")
    wait_paths(state, "h2", {"h1": "fastdp", "h3": "fastdp"})  # one device per family
    assert endpoints(state, "h2") == {
        "h1": "172.31.0.1:6783",
        "h3": "[fd6d:6573:686e:1::2]:6783",
    }
    h1_peers = {p["nickname"]: p for p in api(state, "h1").get("/status/peers")}
    assert h1_peers["h3"]["via"] == ["h2"], h1_peers["h3"]
    assert iperf(state, "h1-c1", "h3-c1") > 0


def test_path_mtu_over_ipv6_packet_too_big_then_fits(make_lab: Any) -> None:
    """The IPv6 twin of test_overlay's PMTU test: a smaller IPv6 underlay link under a running
    mesh is found again (1300 - IPv6 - UDP) and oversized packets are refused like a router."""
    state = make_lab(builtin("line", 2, 1, "ipv6"), fastdp=False)  # the sleeve's own search
    c = containers(state)
    wait_ping(c["h1-c1"], c["h2-c1"])
    wait_pmtu(state, "h1", 1452, "1500 - IPv6 - UDP")
    mtu = int(ns_run(c["h1-c1"]["namespace"], "cat", "/sys/class/net/ethwe/mtu").stdout)
    target = ip_of(c["h2-c1"])
    ok = ping_whole(c["h1-c1"], target, mtu - 28)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    shrink_underlay(state, 1300)
    result = ping_whole(c["h1-c1"], target, mtu - 28, count=3)
    assert refused_as_too_big(result), result.stdout + result.stderr
    wait_pmtu(state, "h1", 1252, "found again: 1300 - IPv6 - UDP")
    fits = ping_whole(c["h1-c1"], target, 1000)
    assert fits.returncode == 0, fits.stdout + fits.stderr
