"""Routers behind NAT (issue 19): a host behind a home router or a cloud NAT gateway joins the
mesh, whatever port its NAT picks, through real nftables NAT in the lab."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest

from meshnet.dataplane.sleeve import wire
from meshnet.lab import topology as topo
from tests.net.conftest import ns_run
from tests.net.test_mesh import api, wait_for

pytestmark = pytest.mark.netns

PASSWORD = "correct horse battery staple, behind a NAT"


def nat_mesh(*nats: str) -> topo.Topology:
    """A public host p and one host n<i> behind a NAT of each kind given; a container each."""
    hosts = [topo.HostSpec("p", ("p-c1",))]
    hosts += [topo.HostSpec(f"n{i}", (f"n{i}-c1",), kind) for i, kind in enumerate(nats, 1)]
    return topo.validate(topo.Topology(hosts=tuple(hosts), links=()))


def container(state: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in state["containers"] if c["name"] == name)


def address(state: dict[str, Any], name: str) -> str:
    return str(container(state, name)["addresses"][0].split("/")[0])


def ping_loss(state: dict[str, Any], source: str, target: str, count: int = 20) -> float:
    """Percent lost of ``count`` pings from container ``source`` to container ``target``."""
    out = ns_run(
        container(state, source)["namespace"],
        "ping",
        "-q",
        "-c",
        str(count),
        "-i",
        "0.1",
        "-W",
        "1",
        address(state, target),
    ).stdout
    for part in out.split(","):
        if "packet loss" in part:
            return float(part.split("%")[0])
    raise AssertionError(f"no ping summary in {out!r}")


def path_to(state: dict[str, Any], host: str, peer_nickname: str) -> dict[str, Any]:
    paths = api(state, host).get("/status/dataplane")["paths"]
    return next(p for p in paths.values() if p["nickname"] == peer_nickname)


def nat_of(state: dict[str, Any], host: str) -> dict[str, Any]:
    return next(n for n in state["nats"] if n["host"] == host)


def mapped_port(nat: dict[str, Any], port: int) -> int:
    """The public port the NAT maps its host's UDP ``port`` to: the reply direction's
    destination port of that flow in the NAT's connection table."""
    table = ns_run(
        nat["namespace"],
        "conntrack",
        "-L",
        "-p",
        "udp",
        "-s",
        nat["host_address"],
        "--sport",
        str(port),
    ).stdout
    for line in table.splitlines():
        ports = [int(f.split("=")[1]) for f in line.split() if f.startswith("dport=")]
        if len(ports) == 2:
            return ports[1]
    raise AssertionError(f"no mapping of {nat['host_address']}:{port} in {table!r}")


@pytest.mark.parametrize("kind", ["masquerade", "random"])
@pytest.mark.parametrize("password", [None, PASSWORD])
def test_a_host_behind_nat_joins_whatever_port_its_nat_picks(
    make_lab: Any, kind: str, password: str | None
) -> None:
    state = make_lab(nat_mesh(kind), password=password, fastdp=False)
    # The lab attached n1's container through its router: IPAM needed p's space, so the UDP
    # path through the NAT was up (how soon is the machine's business: no timed assert).
    assert ping_loss(state, "n1-c1", "p-c1") == 0
    path = path_to(state, "p", "n1")
    assert path["state"] == "established"
    # p's path goes where the NAT really maps n1's UDP port (a random one behind `random`; 6783
    # kept or another behind `masquerade`, whichever datagram made the mapping first).
    nat = nat_of(state, "n1")
    assert path["endpoint"] == f"{nat['public_address']}:{mapped_port(nat, 6783)}"
    assert path["nat_moved"] == (mapped_port(nat, 6783) != 6783)


def test_two_hosts_behind_nats_reach_each_other_through_the_public_one(make_lab: Any) -> None:
    state = make_lab(nat_mesh("masquerade", "random"), fastdp=False)
    assert ping_loss(state, "n1-c1", "n2-c1") == 0
    peers = {p["nickname"]: p for p in api(state, "n1").get("/status/peers")}
    assert peers["n2"]["reachable"] and peers["n2"]["via"] == ["p"]
    # Nobody is told to dial an address behind a NAT: the NATed hosts dial p only (p's
    # advertised connections are inbound ones), and p dials nobody.
    for host in ("n1", "n2"):
        targets = api(state, host).get("/status/targets")
        assert [t["state"] for t in targets] == ["connected"], targets
    assert api(state, "p").get("/status/targets") == []


def test_a_nat_that_forgets_its_mappings_mid_stream_is_followed_within_seconds(
    make_lab: Any,
) -> None:
    state = make_lab(nat_mesh("masquerade"), password=PASSWORD, fastdp=False)
    assert ping_loss(state, "n1-c1", "p-c1") == 0
    pinging = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            container(state, "n1-c1")["namespace"],
            "ping",
            "-q",
            "-i",
            "0.1",
            "-c",
            "150",
            "-W",
            "1",
            address(state, "p-c1"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)
        # Every mapping gone; p's next heartbeat to the old port creates a conflicting entry,
        # so n1's traffic comes out of another port, which p must follow.
        flushed = ns_run(nat_of(state, "n1")["namespace"], "conntrack", "-F")
        assert flushed.returncode == 0, flushed.stderr
        flushed_at = time.monotonic()
        wait_for(
            lambda: ping_loss(state, "n1-c1", "p-c1", count=5) == 0,
            timeout=10,
            what="traffic through the NAT again",
        )
        assert time.monotonic() - flushed_at < 10
    finally:
        pinging.kill()
        pinging.wait()
    assert path_to(state, "p", "n1")["state"] == "established"


def test_with_a_password_no_stranger_moves_a_path(make_lab: Any) -> None:
    state = make_lab(nat_mesh("masquerade"), password=PASSWORD, fastdp=False)
    assert ping_loss(state, "n1-c1", "p-c1") == 0
    endpoint = path_to(state, "p", "n1")["endpoint"]
    n1 = next(h for h in api(state, "p").get("/status/peers") if h["nickname"] == "n1")
    n1_name = int(n1["name"].replace(":", ""), 16)
    p_name = int(api(state, "p").get("/status")["name"].replace(":", ""), 16)
    beat = wire.DatagramHeader(wire.Kind.HEARTBEAT, 0, 1, n1_name, p_name, n1_name, 1 << 40)
    forged = bytes(wire.encode_datagram(beat, wire.encode_heartbeat(1, 0, False), bytes(32)))
    internet = state["internet"]["namespace"]
    target = next(u["address"] for u in state["internet"]["public"] if u["host"] == "p")
    # From another host on the internet, and from the NAT's own address at another port.
    for namespace, source_port in ((internet, 6783), (nat_of(state, "n1")["namespace"], 40999)):
        sent = ns_run(
            namespace,
            "python3",
            "-c",
            "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
            f"s.bind(('0.0.0.0', {source_port})); "
            f"[s.sendto(bytes.fromhex(sys.argv[1]), ('{target}', 6783)) for _ in range(20)]",
            forged.hex(),
        )
        assert sent.returncode == 0, sent.stderr
    time.sleep(2)
    assert path_to(state, "p", "n1")["endpoint"] == endpoint
    assert path_to(state, "p", "n1")["state"] == "established"
    dropped = api(state, "p").get("/status/dataplane")["forwarding"]["dropped"]
    assert dropped.get("stranger", 0) >= 20 and dropped.get("bad_tag", 0) >= 20


@pytest.mark.parametrize("kind", ["masquerade", "random"])
def test_fastdp_is_used_through_a_nat_only_where_it_works(make_lab: Any, kind: str) -> None:
    """VXLAN sends from its own port, so a port-preserving NAT maps it like the sleeve's;
    behind `random` the probes fail and the sleeve carries everything. Either way no frame is
    lost to a path that does not work (with per-flow source ports, probes passed a masquerade
    NAT while the containers' flows were dropped: seconds of loss after every start)."""
    state = make_lab(nat_mesh(kind))  # fastdp on, as by default
    # Through the probes' verdict (three silent seconds at most), not one frame lost.
    assert ping_loss(state, "n1-c1", "p-c1", count=60) == 0
    kinds = {path_to(state, "p", "n1")["kind"], path_to(state, "n1", "p")["kind"]}
    if kind == "random":
        assert kinds == {"sleeve"}
    else:
        assert len(kinds) == 1  # both sides agree on what works


# --- hole punching (point 2) ----------------------------------------------------------------------


def relayed_datagrams(state: dict[str, Any], host: str) -> int:
    relayed = api(state, host).get("/status/dataplane")["forwarding"]["relayed"]
    return sum(int(row["datagrams"]) for row in relayed.values())


def punch_record(state: dict[str, Any], host: str, peer: str) -> dict[str, Any]:
    record: dict[str, Any] = (
        api(state, host).get("/status/dataplane")["punch"]["peers"].get(peer, {})
    )
    return record


def via(state: dict[str, Any], host: str, peer: str) -> list[str]:
    peers = {p["nickname"]: p for p in api(state, host).get("/status/peers")}
    return list(peers[peer]["via"])


def forwards_via(state: dict[str, Any], host: str, peer: str, hop: str) -> bool:
    """``host``'s data plane sends unicasts for ``peer`` to ``hop`` (its forwarding snapshot)."""
    names = {p["nickname"]: p["name"] for p in api(state, host).get("/status/peers")}
    routes = api(state, host).get("/status/dataplane")["forwarding"]["routes"]
    return bool(routes.get(names[peer]) == names[hop])


def direct_punched(state: dict[str, Any], host: str, peer: str) -> bool:
    """``host`` reaches ``peer`` directly, over a punched path that is established."""
    peers = {p["nickname"]: p for p in api(state, host).get("/status/peers")}
    paths = api(state, host).get("/status/dataplane")["paths"]
    path = next((p for p in paths.values() if p["nickname"] == peer), None)
    return (
        peers[peer]["reachable"]
        and peers[peer]["via"] == []
        and path is not None
        and path["punched"]
        and path["state"] == "established"
    )


@pytest.mark.parametrize("password", [None, PASSWORD])
def test_two_hosts_behind_port_keeping_nats_punch_a_direct_path_and_fall_back_when_it_dies(
    make_lab: Any, password: str | None
) -> None:
    state = make_lab(nat_mesh("masquerade", "masquerade"), password=password, fastdp=False)
    assert ping_loss(state, "n1-c1", "n2-c1", count=5) == 0  # relayed by p at first
    started = time.monotonic()
    wait_for(lambda: direct_punched(state, "n1", "n2"), timeout=10, what="a punched path")
    wait_for(lambda: direct_punched(state, "n2", "n1"), timeout=3, what="both sides")
    print(f"punched after {time.monotonic() - started:.1f} s")
    time.sleep(0.5)  # what was in flight on the relay
    before = relayed_datagrams(state, "p")
    assert ping_loss(state, "n1-c1", "n2-c1") == 0
    assert relayed_datagrams(state, "p") == before  # p carries none of it any more
    punch = api(state, "n1").get("/status/dataplane")["punch"]
    assert punch["nat"] in ("port-preserving", "port-changing"), punch
    # n1's NAT now drops everything from n2's: the punched path dies, traffic is relayed again.
    n2_public = nat_of(state, "n2")["public_address"]
    nat_ns = nat_of(state, "n1")["namespace"]
    for command in (
        "add table ip mnblock",
        "add chain ip mnblock in { type filter hook prerouting priority -300; }",
        f"add rule ip mnblock in ip saddr {n2_public} meta l4proto udp drop",
    ):
        result = ns_run(nat_ns, "nft", *command.split())
        assert result.returncode == 0, result.stderr
    cut = time.monotonic()
    wait_for(lambda: via(state, "n1", "n2") == ["p"], timeout=10, what="the relay again")
    print(f"relayed again after {time.monotonic() - cut:.1f} s")
    # The data planes follow the routes' view, which coalesces changes over 100 ms: a ping
    # sent at once could still leave by the dead path (seen once in CI: 1 of 10 lost).
    wait_for(
        lambda: forwards_via(state, "n1", "n2", "p") and forwards_via(state, "n2", "n1", "p"),
        timeout=2,
        what="both data planes to relay through p",
    )
    assert ping_loss(state, "n1-c1", "n2-c1", count=10) == 0
    assert relayed_datagrams(state, "p") > before
    # The NAT lets it through again: punching is retried after its back-off, and succeeds.
    assert ns_run(nat_ns, "nft", "delete", "table", "ip", "mnblock").returncode == 0
    retry = (
        punch_record(state, "n1", "n2")["retry_in"] or punch_record(state, "n2", "n1")["retry_in"]
    )
    assert 0 < retry <= 20
    wait_for(lambda: direct_punched(state, "n1", "n2"), timeout=retry + 8, what="a new punch")
    assert ping_loss(state, "n1-c1", "n2-c1", count=5) == 0


def dropped(state: dict[str, Any], host: str) -> dict[str, int]:
    counts: dict[str, int] = api(state, host).get("/status/dataplane")["forwarding"]["dropped"]
    return counts


def test_moving_onto_a_punched_path_loses_nothing(make_lab: Any) -> None:
    """Pings every 5 ms from the first, across the punch: the two routers start using the
    direct path at different moments (each once it knows both ends list it), and what the
    other sent by the relay meanwhile, or sent directly first, still arrives."""
    state = make_lab(nat_mesh("masquerade", "masquerade"), password=PASSWORD, fastdp=False)
    pinging = subprocess.Popen(
        ["ip", "netns", "exec", container(state, "n1-c1")["namespace"],
         "ping", "-q", "-i", "0.005", "-c", "1600", "-W", "2", address(state, "n2-c1")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: direct_punched(state, "n1", "n2"), timeout=6, what="a punched path")
        wait_for(lambda: direct_punched(state, "n2", "n1"), timeout=3, what="both sides")
        assert pinging.poll() is None, "the pings ended before the punch"
        out, _ = pinging.communicate(timeout=20)
    finally:
        pinging.kill()
        pinging.wait()
    summary = next(line for line in out.splitlines() if "transmitted" in line)
    drops = {h: dropped(state, h) for h in ("n1", "n2", "p")}
    assert ", 0% packet loss" in summary, (summary, drops)


@pytest.mark.parametrize("password", [None, PASSWORD])
def test_hosts_behind_random_port_nats_stay_relayed_and_say_why(
    make_lab: Any, password: str | None
) -> None:
    state = make_lab(nat_mesh("random", "random"), password=password, fastdp=False)
    assert ping_loss(state, "n1-c1", "n2-c1") == 0
    assert via(state, "n1", "n2") == ["p"]

    def reason() -> str | None:
        for host, peer in (("n1", "n2"), ("n2", "n1")):
            record = punch_record(state, host, peer)
            if record.get("failures"):  # an attempt failed (not "they did not know yet")
                return str(record["reason"])
        return None

    # Keep traffic flowing so the attempt is made; it fails, and status says why.
    pinging = subprocess.Popen(
        ["ip", "netns", "exec", container(state, "n1-c1")["namespace"],
         "ping", "-q", "-i", "0.2", "-w", "25", address(state, "n2-c1")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        why = wait_for(reason, timeout=25, what="a reason")
    finally:
        pinging.kill()
        pinging.wait()
    assert "NAT" in why or "heartbeat" in why, why
    assert via(state, "n1", "n2") == ["p"]
    assert ping_loss(state, "n1-c1", "n2-c1", count=10) == 0
