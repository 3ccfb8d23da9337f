"""The overlay on the real kernel: containers on different hosts share one Ethernet."""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import subprocess
import sys
import time
from subprocess import CompletedProcess
from typing import Any, cast

import pytest

from meshnet.api.client import ApiClient
from meshnet.dataplane.kernel import netlink
from meshnet.lab import lab as lablib
from tests.conftest import run_meshnet
from tests.net.conftest import can_ping, ns_run
from tests.net.test_mesh import MESHNET, api, daemon_pid, wait_for


@pytest.fixture(autouse=True)
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHNET_HEARTBEAT_INTERVAL", "1")


def containers(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in state["containers"]}


def ip_of(container: dict[str, Any], version: int | None = None) -> str:
    """The container's first overlay address (IPv4 first), or its first of IP ``version``."""
    for cidr in container["addresses"]:
        address = str(cidr.split("/")[0])
        if version is None or (":" in address) == (version == 6):
            return address
    raise AssertionError(f"{container['name']} has no IPv{version} address: {container}")


def wait_ping(
    src: dict[str, Any], dst: dict[str, Any], timeout: float = 30, version: int | None = None
) -> None:
    wait_for(
        lambda: can_ping(src["namespace"], ip_of(dst, version)),
        timeout=timeout,
        what=f"{src['name']} to reach {dst['name']}" + (f" over IPv{version}" if version else ""),
    )


def ping_whole(src: dict[str, Any], target: str, size: int, count: int = 1) -> CompletedProcess:
    """``ping -M do -s SIZE`` from a container (the target's family): never fragmented, so an
    oversized packet is refused (locally, or by the path's "too big" answer)."""
    pace = ["-c1", "-W2"] if count == 1 else [f"-c{count}", "-i0.3", "-W1"]
    return ns_run(src["namespace"], "ping", *pace, "-M", "do", "-s", str(size), target)


def refused_as_too_big(result: CompletedProcess) -> bool:
    """What ping says when a router on the path answered "too big" (ICMP frag needed, ICMPv6
    packet too big), or the kernel refused to send what such an answer taught it."""
    text = (result.stdout + result.stderr).lower()
    said = ("frag needed", "packet too big", "message too long")
    return result.returncode != 0 and any(x in text for x in said)


def shrink_underlay(state: dict[str, Any], mtu: int) -> None:
    """Every underlay link of the lab to ``mtu``, under the running mesh, at both ends."""
    namespaces = {h["name"]: h["namespace"] for h in state["hosts"]}
    for link in state["links"]:
        for end, peer in ((link["a"], link["b"]), (link["b"], link["a"])):
            done = ns_run(namespaces[end], "ip", "link", "set", f"to-{peer}", "mtu", str(mtu))
            assert done.returncode == 0, done.stderr


def wait_pmtu(state: dict[str, Any], host: str, pmtu: int, why: str) -> None:
    """Until ``host``'s only sleeve path has found the path MTU ``pmtu``."""
    client = api(state, host)
    wait_for(
        lambda: [p["pmtu"] for p in client.get("/status/dataplane")["paths"].values()] == [pmtu],
        timeout=30,
        what=f"path MTU {pmtu} ({why})",
    )


def dataplane(state: dict[str, Any], host: str) -> dict[str, Any]:
    status: dict[str, Any] = api(state, host).get("/status/dataplane")
    return status


def test_every_container_reaches_every_other_across_a_line(make_lab: Any) -> None:
    state = make_lab("line", hosts=3, containers=1)
    c = containers(state)
    wait_ping(c["h1-c1"], c["h3-c1"])  # h1 and h3 share no link: through h2's router
    for a, b in itertools.permutations(c.values(), 2):
        assert can_ping(a["namespace"], ip_of(b)), (a["name"], b["name"])
    neigh = ns_run(c["h1-c1"]["namespace"], "ip", "neigh", "show", ip_of(c["h3-c1"])).stdout
    assert c["h3-c1"]["mac"] in neigh  # ARP crossed the overlay and back
    # h2 relayed: it forwarded datagrams it neither originated nor consumed.
    relayed = dataplane(state, "h2")["forwarding"]["relayed"]
    assert sum(v["datagrams"] for v in relayed.values()) > 0


def test_a_tcp_stream_crosses_intact(make_lab: Any) -> None:
    state = make_lab("line", hosts=3, containers=1)
    c = containers(state)
    wait_ping(c["h1-c1"], c["h3-c1"])
    payload = os.urandom(8 * 1024 * 1024)
    digest = hashlib.sha256(payload).hexdigest()
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            c["h3-c1"]["namespace"],
            sys.executable,
            "-c",
            "import socket,hashlib,sys\n"
            "s=socket.create_server(('0.0.0.0',5001));c,_=s.accept();h=hashlib.sha256();n=0\n"
            "while (d:=c.recv(1<<16)):\n h.update(d);n+=len(d)\n"
            "print(n,h.hexdigest())",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        client = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                c["h1-c1"]["namespace"],
                sys.executable,
                "-c",
                f"import socket,sys\ns=socket.create_connection(('{ip_of(c['h3-c1'])}',5001))\n"
                "s.sendall(sys.stdin.buffer.read());s.close()",
            ],
            input=payload,
            capture_output=True,
            timeout=60,
        )
        assert client.returncode == 0, client.stderr
        out, _ = server.communicate(timeout=60)
    finally:
        server.kill()
    assert out.split() == [str(len(payload)), digest]


def test_pings_take_the_express_lanes_and_tcp_stays_in_the_bulk_ones(make_lab: Any) -> None:
    """Each router has both express lanes (kernel/lanes.py): h1's TAP hands it the pings on
    their express queue, it sends them marked, and h2's kernel hands them to its express
    socket; the replies come back the same way. TCP, however small its segments, never takes
    them (it must not overtake its own super-frames)."""
    state = make_lab("line", hosts=2, containers=1, fastdp=False)
    c = containers(state)
    wait_ping(c["h1-c1"], c["h2-c1"])

    def lanes(host: str) -> dict[str, Any]:
        return cast(dict[str, Any], dataplane(state, host)["forwarding"]["express_lanes"])

    assert {k: lanes("h1")[k] for k in ("tap", "udp")} == {"tap": True, "udp": True}
    before = lanes("h1"), lanes("h2")
    pinged = ns_run(c["h1-c1"]["namespace"], "ping", "-c", "20", "-i", "0.01", ip_of(c["h2-c1"]))
    assert pinged.returncode == 0, pinged.stdout
    after = lanes("h1"), lanes("h2")
    for host in (0, 1):  # requests out of h1 and into h2, replies out of h2 and into h1
        assert after[host]["sent"] - before[host]["sent"] >= 20
        assert after[host]["received"] - before[host]["received"] >= 20
    payload = "x" * 200  # small segments: each write one
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            c["h2-c1"]["namespace"],
            sys.executable,
            "-c",
            "import socket\ns=socket.create_server(('0.0.0.0',5002));c,_=s.accept()\n"
            "while c.recv(4096): pass",
        ],
    )
    try:
        time.sleep(0.5)
        sent = ns_run(
            c["h1-c1"]["namespace"],
            sys.executable,
            "-c",
            f"import socket,time\ns=socket.create_connection(('{ip_of(c['h2-c1'])}',5002))\n"
            "s.setsockopt(socket.IPPROTO_TCP,socket.TCP_NODELAY,1)\n"
            f"for _ in range(200): s.sendall(b'{payload}'); time.sleep(0.002)\ns.close()",
        )
        assert sent.returncode == 0, sent.stderr
        server.wait(timeout=30)
    finally:
        server.kill()
    final = lanes("h1"), lanes("h2")
    # ARP or Neighbor Discovery may still cross; 200 segments and their ACKs did not.
    assert final[0]["sent"] - after[0]["sent"] < 10
    assert final[1]["sent"] - after[1]["sent"] < 10


def test_path_mtu_too_big_is_answered_like_a_router(make_lab: Any) -> None:
    state = make_lab("line", hosts=2, containers=1, fastdp=False)  # the sleeve's own search
    c = containers(state)
    wait_ping(c["h1-c1"], c["h2-c1"])
    mtu = int(ns_run(c["h1-c1"]["namespace"], "cat", "/sys/class/net/ethwe/mtu").stdout)
    target = ip_of(c["h2-c1"])
    ok = ping_whole(c["h1-c1"], target, mtu - 28)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    too_big = ping_whole(c["h1-c1"], target, mtu - 27)
    assert too_big.returncode != 0 and "mtu" in (too_big.stdout + too_big.stderr).lower()
    # Shrink the underlay under a running mesh: the sleeve finds the smaller path MTU and
    # answers oversized packets with "fragmentation needed", as a router on the path would.
    shrink_underlay(state, 1300)
    # The first oversized packet meets the smaller link (EMSGSIZE), which restarts the search.
    result = ping_whole(c["h1-c1"], target, mtu - 28, count=3)
    assert refused_as_too_big(result), result.stdout + result.stderr
    wait_pmtu(state, "h1", 1272, "found again: 1300 - IPv4 - UDP")
    small = ping_whole(c["h1-c1"], target, 1000)
    assert small.returncode == 0


def _sniff(namespace: str, ifname: str, seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            namespace,
            "timeout",
            str(seconds),
            "tcpdump",
            "-i",
            ifname,
            "-U",
            "-w",
            "-",
            "udp port 6783 or udp port 6784",  # the sleeve or, without a password, fastdp
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


def _send_secret(state: dict[str, Any], secret: bytes) -> None:
    c = containers(state)
    listener = subprocess.Popen(
        ["ip", "netns", "exec", c["h2-c1"]["namespace"], "nc", "-l", "-p", "7777"],
        stdout=subprocess.PIPE,
    )
    time.sleep(0.5)
    subprocess.run(
        ["ip", "netns", "exec", c["h1-c1"]["namespace"], "nc", "-N", ip_of(c["h2-c1"]), "7777"],
        input=secret,
        timeout=20,
        check=True,
    )
    out, _ = listener.communicate(timeout=20)
    assert out == secret


@pytest.mark.parametrize("password", [None, "correct horse"])
def test_the_underlay_sees_plaintext_only_without_a_password(
    make_lab: Any, password: str | None
) -> None:
    state = make_lab("line", hosts=2, containers=1, password=password)
    c = containers(state)
    wait_ping(c["h1-c1"], c["h2-c1"])
    secret = b"MESHNET-KNOWN-STRING-" + os.urandom(4).hex().encode()
    sniffer = _sniff(state["hosts"][0]["namespace"], "to-h2", 6)
    time.sleep(1)
    _send_secret(state, secret)
    capture, _ = sniffer.communicate(timeout=20)
    assert len(capture) > 200  # the sleeve's datagrams were captured
    assert (secret in capture) == (password is None)


def test_a_replayed_datagram_is_dropped_and_counted(make_lab: Any) -> None:
    state = make_lab("line", hosts=2, containers=1, password="replay me not")
    c = containers(state)
    wait_ping(c["h1-c1"], c["h2-c1"])
    h1ns = state["hosts"][0]["namespace"]
    # Capture one sealed datagram h1 sends to h2, then send it again from h1's address.
    sniffer = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            h1ns,
            "timeout",
            "15",  # tcpdump and ping start slowly under load: the capture must outlive both
            "tcpdump",
            "-i",
            "to-h2",
            "-c",
            "1",
            "-x",
            "-n",
            f"udp dst port 6783 and src host {state['hosts'][0]['addresses'][0]} and greater 200",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert sniffer.stderr is not None
    for line in sniffer.stderr:  # ping only once tcpdump listens (slow to start under load)
        if "listening on" in line:
            break
    ns_run(c["h1-c1"]["namespace"], "ping", "-c3", "-s", "300", "-i", "0.2", ip_of(c["h2-c1"]))
    dump, errors = sniffer.communicate(timeout=20)
    hexdata = "".join(
        line.split(":", 1)[1].replace(" ", "")
        for line in dump.splitlines()
        if line.strip().startswith("0x")
    )
    packet = bytes.fromhex(hexdata)
    payload = packet[28:]  # IPv4 (20, no options on our links) + UDP (8)
    assert len(payload) > 100, f"no datagram captured: {dump!r} {errors!r}"
    h1_addr = state["hosts"][0]["addresses"][0]
    h2_addr = next(u["address"] for u in state["hosts"][1]["underlay"]).split("/")[0]
    h2 = api(state, "h2")
    before = h2.get("/status/dataplane")["forwarding"]["dropped"]
    script = (
        f"import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        f"s.bind(('{h1_addr}',0));s.sendto(bytes.fromhex('{payload.hex()}'),('{h2_addr}',6783))"
    )
    assert ns_run(h1ns, sys.executable, "-c", script).returncode == 0

    # Kind, flags and sequence of what was replayed, for the failure message.
    header = (payload[1], payload[2], int.from_bytes(payload[24:32], "big"))
    deadline = time.monotonic() + 10
    dropped = before
    while dropped.get("replayed", 0) <= before.get("replayed", 0):
        assert time.monotonic() < deadline, (
            f"replay of (kind, flags, sequence) {header} not counted: "
            f"h2 dropped {before} before, {dropped} now"
        )
        time.sleep(0.2)
        dropped = h2.get("/status/dataplane")["forwarding"]["dropped"]


def test_a_killed_router_leaves_containers_and_traffic_returns_after_restart(
    make_lab: Any,
) -> None:
    state = make_lab("line", hosts=2, containers=1)
    c = containers(state)
    wait_ping(c["h1-c1"], c["h2-c1"])
    host = next(h["namespace"] for h in state["hosts"] if h["name"] == "h1")

    def bridge_mac() -> str:
        return ns_run(host, "cat", "/sys/class/net/meshnet/address").stdout.strip()

    mac = bridge_mac()
    os.kill(daemon_pid(state, "h1"), signal.SIGKILL)
    time.sleep(0.5)
    addr = ns_run(c["h1-c1"]["namespace"], "ip", "-o", "addr", "show", "ethwe").stdout
    assert c["h1-c1"]["addresses"][0] in addr
    lablib.start_router(state["name"], "h1")
    wait_ping(c["h1-c1"], c["h2-c1"], timeout=40)
    # The bridge keeps its MAC (new TAP and VXLAN ports): containers' ARP entries for the
    # host's addresses on it (DNS) stay right.
    assert bridge_mac() == mac
    assert [a["namespace"] for a in api(state, "h1").get("/containers")] == [
        c["h1-c1"]["namespace"]
    ]


def test_a_container_recreated_with_its_address_is_reachable_at_once(make_lab: Any) -> None:
    """A new namespace with the old address (a restarted container) announces its new MAC, so
    a peer that had the old one cached does not wait for its ARP entry to go stale."""
    from tests.net.test_ipam import new_namespace

    state = make_lab("line", hosts=2, containers=1)
    c = containers(state)
    first = new_namespace(state, "again1")
    address = api(state, "h2").post("/attach", {"container": first, "addresses": ["net:default"]})
    ip = address["addresses"][0].split("/")[0]
    wait_for(lambda: can_ping(c["h1-c1"]["namespace"], ip), timeout=30, what="the first one")
    api(state, "h2").post("/detach", {"container": first, "addresses": []})
    netlink.remove_namespace(first)
    second = new_namespace(state, "again2")
    again = api(state, "h2").post("/attach", {"container": second, "addresses": [f"ip:{ip}"]})
    assert again["addresses"] == address["addresses"] and again["mac"] != address["mac"]
    neighbours = ns_run(c["h1-c1"]["namespace"], "ip", "neigh", "show", ip).stdout
    assert address["mac"] not in neighbours  # the announcement replaced the cached MAC
    assert can_ping(c["h1-c1"]["namespace"], ip)  # one try, one second


def test_attach_errors_are_one_line(make_lab: Any) -> None:
    state = make_lab("line", hosts=1, containers=1)
    host = state["hosts"][0]["name"]

    def attach(*args: str) -> subprocess.CompletedProcess[str]:
        return run_meshnet(
            "lab", "exec", "--name", state["name"], host, "--", *MESHNET, "attach", *args
        )

    for result, fragment in (
        (attach("10.32.9.9/12", "no-such-namespace"), "no such container"),
        (attach("10.32.300.1/12", state["containers"][0]["namespace"]), "bad address"),
        (attach("10.32.9.9/12", "999999999"), "no such container"),
    ):
        assert result.returncode != 0
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert fragment in result.stderr, result.stderr
    other = f"mn-{state['name']}-extra"
    netlink.create_namespace(other)
    try:
        in_use = attach(state["containers"][0]["addresses"][0], other)
        assert in_use.returncode != 0 and "already in use" in in_use.stderr, in_use.stderr
        assert len(in_use.stderr.strip().splitlines()) == 1
        ok = attach("10.32.77.1/12", other)
        assert ok.returncode == 0, ok.stderr
        again = attach("10.32.77.1/12", other)  # idempotent
        assert again.returncode == 0
        ps = run_meshnet("lab", "exec", "--name", state["name"], host, "--", *MESHNET, "ps")
        assert other in ps.stdout and "10.32.77.1/12" in ps.stdout
        detach = run_meshnet(
            "lab", "exec", "--name", state["name"], host, "--", *MESHNET, "detach", other
        )
        assert detach.returncode == 0, detach.stderr
        assert not ns_run(other, "ip", "link", "show", "ethwe").stdout
    finally:
        netlink.remove_namespace(other)


def test_garbage_datagrams_are_dropped_and_counted_while_forwarding_goes_on(
    make_lab: Any,
) -> None:
    state = make_lab("line", hosts=2, containers=1)
    c = containers(state)
    wait_ping(c["h1-c1"], c["h2-c1"])
    h1ns = state["hosts"][0]["namespace"]
    h2_addr = next(u["address"] for u in state["hosts"][1]["underlay"]).split("/")[0]
    script = (
        "import socket,os\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "for n in range(500):\n"
        f" s.sendto(os.urandom(n % 1400 + 1),('{h2_addr}',6783))\n"
        f"s.sendto(b'\\x01\\x00\\x00\\x05'+bytes(28),('{h2_addr}',6783))\n"
    )
    assert ns_run(h1ns, sys.executable, "-c", script).returncode == 0
    time.sleep(1)
    dropped = api(state, "h2").get("/status/dataplane")["forwarding"]["dropped"]
    assert sum(dropped.values()) >= 400, dropped
    assert can_ping(c["h1-c1"]["namespace"], ip_of(c["h2-c1"]))
    assert ApiClient(lablib.host_api_socket(state["hosts"][1]["dir"])).is_ready()
