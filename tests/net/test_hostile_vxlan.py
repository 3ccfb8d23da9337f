"""Issue 17.1: a stranger on the underlay sprays VXLAN at a router's UDP 6784.

The kernel's VXLAN socket takes datagrams from anyone; only the router's source filter (the
``inet meshnet-fastdp`` table) stands between a stranger and the bridge. These tests attack a
real router in a lab from a namespace outside the mesh that shares h1's underlay.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from meshnet.constants import FASTDP_PORT
from meshnet.dataplane.fastdp.core import DEVICE, VNI
from meshnet.dataplane.kernel import vxlan_filter
from meshnet.lab import lab as lablib
from tests.net.conftest import ns_run, rss_kib
from tests.net.test_fastdp import host_ns, vxlan_packets, wait_paths
from tests.net.test_mesh import api, cli_json, daemon_pid, wait_for
from tests.net.test_overlay import containers, dataplane, ip_of, wait_ping
from tests.net.test_tui import metrics

pytestmark = pytest.mark.netns

EVIL_MAC = "02:ee:77:00:00:01"
# The stranger's link into h1: an address pair of the benchmarking range, outside the lab's
# underlay (172.31/16) and the overlay.
ROUTER_SIDE, EVIL_SIDE = "198.18.0.1", "198.18.0.2"


@pytest.fixture(autouse=True)
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHNET_HEARTBEAT_INTERVAL", "1")


@contextmanager
def stranger(state: dict[str, Any], host: str) -> Iterator[str]:
    """A namespace outside the mesh with a veth into `host`'s underlay namespace; removed
    afterwards whatever happens."""
    namespace = f"{lablib.namespace_prefix(state['name'])}evil"
    target = host_ns(state, host)
    try:
        for command in (
            ["ip", "netns", "add", namespace],
            [
                "ip",
                "-n",
                namespace,
                "link",
                "add",
                "evil0",
                "type",
                "veth",
                "peer",
                "name",
                "ul-evil",
                "netns",
                target,
            ],
            ["ip", "-n", namespace, "addr", "add", f"{EVIL_SIDE}/30", "dev", "evil0"],
            ["ip", "-n", namespace, "link", "set", "evil0", "up"],
            ["ip", "-n", target, "addr", "add", f"{ROUTER_SIDE}/30", "dev", "ul-evil"],
            ["ip", "-n", target, "link", "set", "ul-evil", "up"],
        ):
            subprocess.run(command, check=True, capture_output=True, text=True)
        yield namespace
    finally:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)  # the veth too


# Counts frames from the stranger's MAC on ethwe, as tcpdump would (an AF_PACKET socket).
_SNIFF = textwrap.dedent(
    """
    import json, socket, sys, time
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
    s.bind(("ethwe", 0)); s.settimeout(0.1)
    evil = bytes.fromhex(sys.argv[1].replace(":", "")); seen = 0
    end = time.monotonic() + float(sys.argv[2])
    print("ready", flush=True)
    while time.monotonic() < end:
        try:
            data = s.recv(65536)
        except TimeoutError:
            continue
        seen += data[6:12] == evil
    print(json.dumps(seen))
    """
)

# Sprays VXLAN datagrams (8-byte header: flags with the I bit, VNI) carrying a broadcast ARP
# request, a unicast ARP request and a unicast frame of an experimental ethertype for the
# container's MAC; prints how many datagrams it sent.
_SPRAY = textwrap.dedent(
    """
    import socket, struct, sys, time
    target, port, vni, evil, victim_mac, victim_ip, seconds = sys.argv[1:8]
    evil = bytes.fromhex(evil.replace(":", "")); victim = bytes.fromhex(victim_mac.replace(":", ""))
    head = struct.pack("!II", 0x08000000, int(vni) << 8)
    def arp(dst):
        body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, evil,
                           socket.inet_aton("198.18.0.2"), bytes(6), socket.inet_aton(victim_ip))
        return dst + evil + b"\\x08\\x06" + body.ljust(46, b"\\0")
    other = victim + evil + b"\\x88\\xb6" + b"evil".ljust(46, b"\\0")
    frames = [arp(b"\\xff" * 6), arp(victim), other]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0; end = time.monotonic() + float(seconds)
    while time.monotonic() < end:
        for frame in frames:
            s.sendto(head + frame, (target, int(port))); sent += 1
        time.sleep(0.01)
    print(sent)
    """
)


def _foreign_dropped(state: dict[str, Any], host: str) -> int:
    fast = dataplane(state, host)["fastdp"]
    return int((fast.get("filter") or {}).get("foreign_dropped") or 0)  # no filter: none


def test_vxlan_from_a_stranger_never_reaches_a_container_and_is_counted(make_lab: Any) -> None:
    state = make_lab("line", hosts=2, containers=1)
    c = containers(state)
    victim, friend = c["h1-c1"], c["h2-c1"]
    wait_paths(state, "h1", {"h2": "fastdp"})
    wait_paths(state, "h2", {"h1": "fastdp"})
    wait_ping(victim, friend)
    pid = daemon_pid(state, "h1")
    rss_before = rss_kib(pid)
    dropped_before = _foreign_dropped(state, "h1")
    vxlan_rx_before = vxlan_packets(state, "h1")[1]

    with stranger(state, "h1") as evil:
        sniffer = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                victim["namespace"],
                sys.executable,
                "-c",
                _SNIFF,
                EVIL_MAC,
                "9",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert sniffer.stdout is not None and sniffer.stdout.readline().strip() == "ready"
            spray = subprocess.Popen(
                ["ip", "netns", "exec", evil, sys.executable, "-c", _SPRAY, ROUTER_SIDE,
                 str(FASTDP_PORT), str(VNI), EVIL_MAC, victim["mac"], ip_of(victim), "5"],
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            # Legitimate traffic between the containers, over VXLAN, while the spray runs.
            ping = ns_run(
                victim["namespace"], "ping", "-c", "30", "-i", "0.1", "-W", "1", ip_of(friend)
            )
            sent = int(spray.communicate(timeout=30)[0])
            seen = json.loads(sniffer.communicate(timeout=30)[0])
        finally:
            for proc in (sniffer, spray):
                proc.kill()
                proc.wait()

    assert sent > 300, sent
    assert seen == 0, f"{seen} of the stranger's {sent} frames reached the container"
    h2_address = next(h["addresses"][0] for h in state["hosts"] if h["name"] == "h2")
    assert dataplane(state, "h1")["fastdp"]["filter"]["allowed"] == [h2_address]
    received = int(re.search(r"(\d+) received", ping.stdout).group(1))  # type: ignore[union-attr]
    assert received >= 27, ping.stdout  # the friend's traffic kept flowing, over fastdp
    assert dataplane(state, "h1")["paths"] and set(
        p["kind"] for p in dataplane(state, "h1")["paths"].values()
    ) == {"fastdp"}
    assert vxlan_packets(state, "h1")[1] - vxlan_rx_before >= 30  # the pings' replies came in
    # Every datagram of the spray was dropped and counted: in `status dataplane --json` ...
    status = cli_json(state, "h1", "status", "dataplane")
    dropped = status["fastdp"]["filter"]["foreign_dropped"] - dropped_before
    assert dropped >= sent * 0.95, (dropped, sent)
    # ... and in /metrics.
    samples = metrics(api(state, "h1"))
    assert samples[("meshnet_fastdp_foreign_dropped_total", ())] >= dropped
    assert rss_kib(pid) - rss_before < 10 * 1024  # dropped in the kernel: nothing grows

    # A router that stops takes its device and then its filter with it.
    api(state, "h1").post("/stop")
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=20, what="h1's router to stop")
    namespace = host_ns(state, "h1")
    assert ns_run(namespace, "ip", "link", "show", DEVICE).returncode != 0
    assert vxlan_filter.TABLE not in ns_run(namespace, "nft", "list", "tables").stdout


def test_with_a_password_and_no_trusted_subnets_there_is_no_vxlan_device(make_lab: Any) -> None:
    state = make_lab("line", hosts=2, containers=1, password="hostile-vxlan-test")
    c = containers(state)
    wait_ping(c["h1-c1"], c["h2-c1"])
    for host in ("h1", "h2"):
        namespace = host_ns(state, host)
        assert ns_run(namespace, "ip", "link", "show", DEVICE).returncode != 0
        fast = dataplane(state, host)["fastdp"]
        assert not fast["enabled"] and "trusted-subnets" in fast["reason"], fast
        # Nothing listens on 6784, so there is nothing to filter either.
        assert ns_run(namespace, "ss", "-Hlun", f"sport = :{FASTDP_PORT}").stdout.strip() == ""


_FAILING_NFT = """#!/bin/sh
# nft that refuses fastdp's filter table (and nothing else): a host whose nftables fails.
script=$(cat)
case "$script" in
  *meshnet-fastdp*"hook input"*) echo "Error: refused by the test" >&2; exit 1 ;;
esac
printf '%s\\n' "$script" | exec {nft} "$@"
"""


def test_a_filter_that_cannot_be_installed_means_no_vxlan_device(
    make_lab: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bin" / "nft"
    fake.parent.mkdir()
    fake.write_text(_FAILING_NFT.format(nft="/usr/sbin/nft"))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    state = make_lab("line", hosts=2, containers=1)
    c = containers(state)
    wait_ping(c["h1-c1"], c["h2-c1"])  # the sleeve carries the traffic
    for host in ("h1", "h2"):
        assert ns_run(host_ns(state, host), "ip", "link", "show", DEVICE).returncode != 0
        fast = dataplane(state, host)["fastdp"]
        assert not fast["enabled"] and "no VXLAN source filter" in fast["reason"], fast
        assert {p["kind"] for p in dataplane(state, host)["paths"].values()} == {"sleeve"}
    log = Path(next(h["dir"] for h in state["hosts"] if h["name"] == "h1")) / "meshnet.log"
    assert "could not be installed" in log.read_text()
    assert vxlan_filter.TABLE not in ns_run(host_ns(state, "h1"), "nft", "list", "tables").stdout
