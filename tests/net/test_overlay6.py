"""Dual-stack containers of a lab (``overlay="dual"``, what `meshnet lab up` gives) over IPv6,
dual and mixed underlays: IPv6 by name across a relay (ping, dig AAAA, iperf3), both families
through a relay joining an IPv4-only and an IPv6-only host, and ICMPv6 "packet too big" from the
sleeve where IPv4 gets "fragmentation needed".
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from meshnet.lab.topology import HostSpec, LinkSpec, Topology, builtin
from tests.net.conftest import ns_run
from tests.net.test_mesh import api
from tests.net.test_overlay import (
    containers,
    ip_of,
    ping_whole,
    refused_as_too_big,
    shrink_underlay,
    wait_ping,
    wait_pmtu,
)
from tests.net.test_underlay6 import iperf_run, ping_name

pytestmark = pytest.mark.netns

DOMAIN = "meshnet.local"


@pytest.fixture(autouse=True)
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHNET_HEARTBEAT_INTERVAL", "1")


def dig_short(container: dict[str, Any], *args: str) -> list[str]:
    """``dig +short`` in a container, through its resolv.conf unless ``args`` name a server."""
    done = ns_run(container["namespace"], "dig", "+short", "+time=2", "+tries=2", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split()


def dns6_of(state: dict[str, Any], host: str) -> str:
    """The IPv6 address ``host``'s DNS server listens on (from the IPv6 ring)."""
    listening = api(state, host).get("/status/dns")["listen_addresses"]
    return next(a.split("/")[0] for a in listening if ":" in a)


@pytest.mark.parametrize("underlay", ["ipv6", "dual"])
def test_dual_stack_containers_by_name_over_ipv6_across_a_relay(
    make_lab: Any, underlay: str
) -> None:
    state = make_lab(builtin("line", 3, 1, underlay), overlay="dual")
    assert state["overlay"] == "dual"
    c = containers(state)
    h1, h3 = c["h1-c1"], c["h3-c1"]
    assert all(ip_of(x, 4) and ip_of(x, 6) for x in c.values())  # both families, from IPAM
    wait_ping(h1, h3, version=6)  # h1 and h3 share no link: through h2's router
    out = ping_name(state, "h1-c1", "h3-c1", "-6")
    assert f"({ip_of(h3, 6)})" in out  # the name resolved to h3-c1's IPv6 overlay address
    ping_name(state, "h1-c1", "h2-c1", "-6")  # a neighbour: fastdp carries IPv6 too
    # AAAA through the container's resolv.conf, and over IPv6 to its host's IPv6 address.
    assert dig_short(h1, "AAAA", f"h3-c1.{DOMAIN}") == [ip_of(h3, 6)]
    server6 = f"@{dns6_of(state, 'h1')}"
    assert dig_short(h1, "-6", server6, "AAAA", f"h3-c1.{DOMAIN}") == [ip_of(h3, 6)]
    assert dig_short(h3, "-x", ip_of(h1, 6)) == [f"h1-c1.{DOMAIN}."]
    report = iperf_run(state, "h1-c1", "h3-c1", "-6")  # relayed: h1's sleeve, h2, h3's
    assert ":" in report["start"]["connected"][0]["remote_host"]  # over IPv6, by name
    assert report["end"]["sum_received"]["bytes"] > 0


def test_a_relay_joins_ipv4_and_ipv6_only_hosts_for_both_overlay_families(
    make_lab: Any,
) -> None:
    mixed = Topology(
        hosts=tuple(HostSpec(h, (f"{h}-c1",)) for h in ("h1", "h2", "h3")),
        links=(LinkSpec("h1", "h2", underlay="ipv4"), LinkSpec("h2", "h3", underlay="ipv6")),
    )
    state = make_lab(mixed, overlay="dual")
    c = containers(state)
    wait_ping(c["h1-c1"], c["h3-c1"], version=6)
    h1_peers = {p["nickname"]: p for p in api(state, "h1").get("/status/peers")}
    assert h1_peers["h3"]["via"] == ["h2"], h1_peers["h3"]  # no way around h2
    for src, dst in (("h1-c1", "h3-c1"), ("h3-c1", "h1-c1")):
        assert f"({ip_of(c[dst], 6)})" in ping_name(state, src, dst, "-6")
        assert f"({ip_of(c[dst], 4)})" in ping_name(state, src, dst, "-4")


def test_ipv6_packet_too_big_from_the_sleeve_then_a_size_that_fits(make_lab: Any) -> None:
    """The IPv6 twin of test_overlay's PMTU test, IPv6 inside the overlay: the sleeve answers an
    IPv6 packet larger than the path carries with ICMPv6 "packet too big", and the container
    then sends what fits.

    The underlay shrinks to 1400, not 1300: IPv6 needs links of 1280 bytes (RFC 8200), and a
    1300 underlay leaves the sleeve less than that per frame."""
    state = make_lab(builtin("line", 2, 1), fastdp=False, overlay="dual")  # the sleeve only
    c = containers(state)
    src, target = c["h1-c1"], ip_of(c["h2-c1"], 6)
    wait_ping(src, c["h2-c1"], version=6)
    wait_pmtu(state, "h1", 1472, "1500 - IPv4 - UDP")
    mtu = int(ns_run(src["namespace"], "cat", "/sys/class/net/ethwe/mtu").stdout)
    whole = ping_whole(src, target, mtu - 48)  # IPv6 header 40, ICMPv6 8: exactly the MTU
    assert whole.returncode == 0, whole.stdout + whole.stderr
    shrink_underlay(state, 1400)
    result = ping_whole(src, target, mtu - 48, count=3)
    assert refused_as_too_big(result), result.stdout + result.stderr
    wait_pmtu(state, "h1", 1372, "found again: 1400 - IPv4 - UDP")
    # Once found, an oversized packet gets the path's own MTU back; the kernel keeps it for the
    # destination (a smaller one learned during the search stays: PMTU only grows on expiry).
    again = ping_whole(src, target, mtu - 48, count=2)
    assert refused_as_too_big(again), again.stdout + again.stderr
    route = ns_run(src["namespace"], "ip", "-6", "route", "get", target).stdout
    learned = re.search(r"\bmtu (\d+)", route)
    assert learned is not None and 1280 <= int(learned.group(1)) < mtu, route
    fits = ping_whole(src, target, int(learned.group(1)) - 48)
    assert fits.returncode == 0, fits.stdout + fits.stderr
    beyond = ping_whole(src, target, int(learned.group(1)) - 47)
    assert beyond.returncode != 0 and "message too long" in (beyond.stdout + beyond.stderr)


def test_ipv6_only_containers_find_each_other_by_name(make_lab: Any) -> None:
    """``overlay="ipv6"`` (`lab up --overlay ipv6`): one IPv6 address per container, and a
    resolv.conf naming its host's IPv6 DNS address, the only server it can reach."""
    state = make_lab(builtin("line", 2, 1), overlay="ipv6")
    c = containers(state)
    h1, h2 = c["h1-c1"], c["h2-c1"]
    assert [":" in a for a in h1["addresses"]] == [True], h1["addresses"]
    no4 = ns_run(h1["namespace"], "ip", "-o", "-4", "addr", "show", "dev", "ethwe")
    assert no4.stdout.strip() == ""
    resolv = ns_run(h1["namespace"], "cat", "/etc/resolv.conf").stdout
    assert f"nameserver {dns6_of(state, 'h1')}" in resolv, resolv
    wait_ping(h1, h2)
    assert f"({ip_of(h2)})" in ping_name(state, "h1-c1", "h2-c1")  # no -6: the only family
    assert dig_short(h1, "AAAA", f"h2-c1.{DOMAIN}") == [ip_of(h2)]
