"""The fast datapath on the real kernel: VXLAN between neighbours, the sleeve for the rest."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from meshnet.dataplane.fastdp.core import DEVICE
from meshnet.lab.topology import HostSpec, LinkSpec, Topology
from tests.net.conftest import can_ping, ns_run
from tests.net.test_mesh import api, wait_for
from tests.net.test_overlay import containers, dataplane, ip_of, wait_ping

pytestmark = pytest.mark.netns


@pytest.fixture(autouse=True)
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHNET_HEARTBEAT_INTERVAL", "1")


def host_ns(state: dict[str, Any], host: str) -> str:
    return str(next(h["namespace"] for h in state["hosts"] if h["name"] == host))


def paths(state: dict[str, Any], host: str) -> dict[str, str]:
    """How `host` sends to each neighbour, by nickname: "fastdp" or "sleeve"."""
    return {p["nickname"]: p["kind"] for p in dataplane(state, host)["paths"].values()}


def wait_paths(state: dict[str, Any], host: str, want: dict[str, str], timeout: float = 20) -> None:
    wait_for(
        lambda: all(paths(state, host).get(k) == v for k, v in want.items()),
        timeout=timeout,
        what=f"{host}'s paths to be {want} (are {paths(state, host)})",
    )


def vxlan_packets(state: dict[str, Any], host: str) -> tuple[int, int]:
    out = ns_run(host_ns(state, host), "ip", "-s", "-j", "link", "show", DEVICE).stdout
    stats = json.loads(out)[0]["stats64"]
    return int(stats["tx"]["packets"]), int(stats["rx"]["packets"])


def sleeve_datagrams(state: dict[str, Any], host: str) -> int:
    """Frames `host`'s sleeve sent (heartbeats and probes are not counted: they are no traffic)."""
    return sum(row["datagrams"] for row in dataplane(state, host)["forwarding"]["sent"].values())


def test_containers_on_two_hosts_talk_over_vxlan_and_the_sleeve_stays_idle(
    make_lab: Any,
) -> None:
    state = make_lab("line", hosts=2, containers=1)
    c = containers(state)
    wait_paths(state, "h1", {"h2": "fastdp"})
    wait_paths(state, "h2", {"h1": "fastdp"})
    wait_ping(c["h1-c1"], c["h2-c1"])

    def sleeves() -> tuple[int, int]:
        return sleeve_datagrams(state, "h1"), sleeve_datagrams(state, "h2")

    def ping_skips_the_sleeve() -> bool:
        before = sleeves()
        return can_ping(c["h1-c1"]["namespace"], ip_of(c["h2-c1"])) and sleeves() == before

    # The path is up before each side has heard which MACs sit behind the other (read from the
    # bridge every second): until then the sleeve carries those MACs' frames, as it should.
    wait_for(ping_skips_the_sleeve, timeout=10, what="the containers' MACs to be on VXLAN")
    vxlan_before = vxlan_packets(state, "h1")
    sleeve_before = sleeves()
    done = ns_run(
        c["h1-c1"]["namespace"], "ping", "-c", "50", "-i", "0.01", "-s", "1200", ip_of(c["h2-c1"])
    )
    assert done.returncode == 0, done.stdout
    vxlan_after = vxlan_packets(state, "h1")
    moved = vxlan_after[0] - vxlan_before[0], vxlan_after[1] - vxlan_before[1]
    assert min(moved) >= 50, (moved, done.stdout, dataplane(state, "h1"))
    assert sleeves() == sleeve_before
    connection = api(state, "h1").get("/status/connections")[0]
    assert connection["data_path"]["kind"] == "fastdp"


def test_no_fastdp_and_a_password_keep_everything_on_the_sleeve(make_lab: Any) -> None:
    plain = make_lab("line", hosts=2, containers=1, fastdp=False)
    sealed = make_lab("line", hosts=2, containers=1, password="fastdp-test")
    for state, reason in ((plain, "turned off"), (sealed, "encrypted")):
        c = containers(state)
        wait_ping(c["h1-c1"], c["h2-c1"])
        status = dataplane(state, "h1")
        (path,) = status["paths"].values()
        assert path["kind"] == "sleeve" and reason in path["fastdp"], path
        before = sleeve_datagrams(state, "h1")
        assert can_ping(c["h1-c1"]["namespace"], ip_of(c["h2-c1"]))
        assert sleeve_datagrams(state, "h1") > before
    for state in (plain, sealed):  # no device at all: no door on the underlay
        assert ns_run(host_ns(state, "h1"), "ip", "link", "show", DEVICE).returncode != 0
        assert dataplane(state, "h1")["fastdp"]["filter"]["installed"] is False


def test_trusted_subnets_use_fastdp_even_with_a_password(
    make_lab: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHNET_TRUSTED_SUBNETS", "172.31.0.0/16")  # the lab's underlay
    state = make_lab("line", hosts=2, containers=1, password="fastdp-test")
    c = containers(state)
    wait_paths(state, "h1", {"h2": "fastdp"})
    before = vxlan_packets(state, "h1")
    assert can_ping(c["h1-c1"]["namespace"], ip_of(c["h2-c1"]))
    assert vxlan_packets(state, "h1")[0] > before[0]
    assert dataplane(state, "h1")["fastdp"]["trusted_subnets"] == ["172.31.0.0/16"]


_LISTEN = textwrap.dedent(
    """
    import collections, json, socket, sys, time
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B6))
    s.bind(("ethwe", 0)); s.settimeout(0.1)
    seen = collections.Counter(); end = time.monotonic() + float(sys.argv[1])
    print("ready", flush=True)
    while time.monotonic() < end:
        try:
            data, addr = s.recvfrom(2048)
        except TimeoutError:
            continue
        if addr[2] != socket.PACKET_OUTGOING:
            seen[data[14:30].rstrip(b"\\0").decode()] += 1
    print(json.dumps(seen))
    """
)
_SEND = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("ethwe", 0))
    src = bytes.fromhex(sys.argv[1].replace(":", ""))
    s.send(b"\\xff" * 6 + src + b"\\x88\\xb6" + sys.argv[2].encode().ljust(46, b"\\0"))
    """
)


def test_four_hosts_fastdp_to_neighbours_relayed_sleeve_beyond_and_broadcasts_arrive_once(
    make_lab: Any,
) -> None:
    # h1 reaches h2 and h3 directly; h4 only through h3.
    hosts = tuple(HostSpec(f"h{i}", (f"h{i}-c1",)) for i in range(1, 5))
    links = (LinkSpec("h1", "h2"), LinkSpec("h1", "h3"), LinkSpec("h3", "h4"))
    state = make_lab(Topology(hosts, links))
    c = containers(state)
    wait_paths(state, "h1", {"h2": "fastdp", "h3": "fastdp"})
    wait_paths(state, "h3", {"h1": "fastdp", "h4": "fastdp"})
    wait_paths(state, "h4", {"h3": "fastdp"})
    ping = ["ip", "netns", "exec", c["h1-c1"]["namespace"], "ping", "-c", "5", "-i", "0.2"]
    pings = {
        name: subprocess.Popen(
            [*ping, "-w", "20", ip_of(c[name])],
            stdout=subprocess.DEVNULL,
        )
        for name in ("h2-c1", "h3-c1", "h4-c1")
    }
    relayed_before = sum(
        r["datagrams"] for r in dataplane(state, "h3")["forwarding"]["relayed"].values()
    )
    for name, proc in pings.items():
        assert proc.wait(timeout=30) == 0, f"h1-c1 could not reach {name}"
    relayed = sum(r["datagrams"] for r in dataplane(state, "h3")["forwarding"]["relayed"].values())
    assert relayed > relayed_before  # h1 <-> h4 went over the sleeve through h3
    assert "h4" not in paths(state, "h1")  # not a neighbour: no VXLAN to it at all

    listeners = {
        name: subprocess.Popen(
            ["ip", "netns", "exec", box["namespace"], sys.executable, "-c", _LISTEN, "4"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for name, box in c.items()
    }
    try:
        for proc in listeners.values():
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for sender in ("h1-c1", "h4-c1", "h2-c1"):
            box = c[sender]
            sent = ns_run(box["namespace"], sys.executable, "-c", _SEND, box["mac"], sender)
            assert sent.returncode == 0, sent.stderr
            time.sleep(0.3)
        seen = {
            name: json.loads(proc.communicate(timeout=15)[0]) for name, proc in listeners.items()
        }
    finally:
        for proc in listeners.values():
            proc.kill()
    for name in c:
        want = {sender: 1 for sender in ("h1-c1", "h4-c1", "h2-c1") if sender != name}
        assert seen[name] == want, (name, seen)


def test_blocking_vxlan_falls_back_to_the_sleeve_and_unblocking_brings_fastdp_back(
    make_lab: Any,
) -> None:
    state = make_lab("line", hosts=2, containers=1)
    c = containers(state)
    wait_paths(state, "h1", {"h2": "fastdp"})
    ns, table = host_ns(state, "h2"), "fastdp_test_block"
    script = (
        f"table inet {table} {{\n chain input {{\n"
        "  type filter hook input priority -300; policy accept;\n"
        f"  udp dport {6784} drop\n }}\n}}\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True, check=True
    )
    try:
        wait_paths(state, "h1", {"h2": "sleeve"}, timeout=10)
        wait_paths(state, "h2", {"h1": "sleeve"}, timeout=10)
        before = sleeve_datagrams(state, "h1")
        assert can_ping(c["h1-c1"]["namespace"], ip_of(c["h2-c1"]))
        assert sleeve_datagrams(state, "h1") > before
    finally:
        ns_run(ns, "nft", "delete", "table", "inet", table)
    wait_paths(state, "h1", {"h2": "fastdp"}, timeout=15)
    wait_paths(state, "h2", {"h1": "fastdp"}, timeout=15)
    before = vxlan_packets(state, "h1")
    assert can_ping(c["h1-c1"]["namespace"], ip_of(c["h2-c1"]))
    assert vxlan_packets(state, "h1")[0] > before[0]


def test_vxlan_frames_lost_to_a_small_mtu_send_traffic_back_to_the_sleeve(
    make_lab: Any,
) -> None:
    state = make_lab("line", hosts=2, containers=1)
    c = containers(state)
    wait_paths(state, "h1", {"h2": "fastdp"})
    # A smaller underlay MTU, and fragments dropped on the way: full-size VXLAN frames vanish
    # without a word (small ones still pass); the full-size probes notice.
    script = (
        "table ip fastdp_test_frag {\n chain pre {\n"
        "  type filter hook prerouting priority -500; policy accept;\n"
        "  ip frag-off & 0x3fff != 0 drop\n }\n}\n"
    )
    for host, peer in (("h1", "h2"), ("h2", "h1")):
        ns = host_ns(state, host)
        ns_run(ns, "ip", "link", "set", f"to-{peer}", "mtu", "1300")
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True)
    wait_paths(state, "h1", {"h2": "sleeve"}, timeout=10)
    assert "down" in dataplane(state, "h1")["paths"].popitem()[1]["fastdp"]
    small = ns_run(c["h1-c1"]["namespace"], "ping", "-c1", "-W2", "-s", "1000", ip_of(c["h2-c1"]))
    assert small.returncode == 0, small.stdout
