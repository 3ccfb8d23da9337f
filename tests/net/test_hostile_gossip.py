"""Issue 17 points 5 and 6: a peer that holds the password but forges gossip.

The attacker is a modified router (tests/net/gossip_attacker.py): it runs in h1's namespace,
completes the real password handshake with h1's router over TCP, and then sends messages built
with meshnet's own encoders: IPAM donation requests in the names of peers that do not exist, and
h2's topology entry and one of h2's DNS records at the maximum version.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from meshnet.api.client import ApiClient
from meshnet.constants import CONTROL_PORT
from meshnet.dns.records import Record, encode_records
from meshnet.gossip.identity import parse_peer_name
from meshnet.gossip.topology import MAX_VERSION, PeerEntry, encode_entries
from meshnet.gossip.versions import PLAUSIBLE_VERSION
from meshnet.ipam.ring import RingUpdate, Token, update_obj
from meshnet.lab import lab as lablib
from meshnet.lab import topology
from tests.conftest import unique_lab_name
from tests.net.test_ipam import new_namespace
from tests.net.test_mesh import wait_for

pytestmark = pytest.mark.netns

PASSWORD = "correct horse battery staple"
ATTACKER = Path(__file__).with_name("gossip_attacker.py")


@pytest.fixture(autouse=True)
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHNET_HEARTBEAT_INTERVAL", "1")


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, Any]]:
    name = unique_lab_name()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MESHNET_HEARTBEAT_INTERVAL", "1")
            lablib.up(name, topology.builtin("line", 3, 1), password=PASSWORD)
        yield lablib.status(name)
    finally:
        if (lablib.lab_root() / name).exists():
            lablib.down(name)


def host(state: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in state["hosts"] if h["name"] == name)


def api(state: dict[str, Any], name: str) -> ApiClient:
    return ApiClient(lablib.host_api_socket(host(state, name)["dir"]))


def attack(state: dict[str, Any], spec: list[list[Any]], seconds: float = 6.0) -> dict[str, Any]:
    """Run the attacker in h1's namespace against h1's router; what it reports at the end."""
    h1 = host(state, "h1")
    result = subprocess.run(
        [
            "ip", "netns", "exec", h1["namespace"], sys.executable, str(ATTACKER),
            f"{h1['addresses'][0]}:{CONTROL_PORT}", str(seconds),
        ],
        input=json.dumps(spec), capture_output=True, text=True, timeout=seconds + 60,
        env={"MESHNET_PASSWORD": PASSWORD, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines[0] == "ready", result.stdout
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return report


def peer_name(client: ApiClient) -> int:
    return parse_peer_name(client.get("/status")["name"])


def local_share(client: ApiClient) -> int:
    return int(next(p for p in client.get("/status/ipam")["peers"] if p["local"])["size"])


def reaches(client: ApiClient, nickname: str) -> bool:
    peers = {p["nickname"]: p for p in client.get("/status/peers")}
    return nickname in peers and peers[nickname]["next_hop"] is not None


def resolves(client: ApiClient, name: str) -> list[str]:
    addresses: list[str] = client.post("/dns/lookup", {"name": name})["addresses"]
    return addresses


def test_forged_donation_requests_do_not_drain_a_peers_range(lab: dict[str, Any]) -> None:
    h1 = api(lab, "h1")
    wait_for(lambda: local_share(h1) > 0, what="h1 owns part of the IPAM range")
    before = local_share(h1)
    status = h1.get("/status/ipam")
    given = status["counters"]["donations_given"]  # to h2 or h3 while the lab came up, maybe
    subnet = ipaddress.IPv4Network(status["default_subnet"])
    target = peer_name(h1)
    spec = []
    for i in range(200):
        fake = 0x0E0000000000 + i  # peers that do not exist
        request = msgpack.packb([1, i + 1, int(subnet.network_address), subnet.prefixlen, None])
        spec.append(["unicast", "ipam", fake, target, request.hex()])
    report = attack(lab, spec, seconds=4.0)
    assert report["sent"] == 200
    time.sleep(1.0)
    assert local_share(h1) == before, "forged requests took part of h1's range"
    assert h1.get("/status/ipam")["counters"]["donations_given"] == given
    assert h1.get("/status")["counters"].get("forgeries_dropped", 0) > 0
    # A legitimate attach on h1 still gets an address of its own range.
    namespace = new_namespace(lab, "late")
    attached = h1.post("/attach", {"container": namespace, "addresses": [], "name": "late"})
    address = ipaddress.IPv4Interface(attached["addresses"][0])
    assert address.ip in ipaddress.IPv4Network(status["range"])
    assert local_share(h1) == before


def test_forged_entries_at_the_maximum_version_do_not_cut_a_peer_off(
    lab: dict[str, Any],
) -> None:
    h1, h2, h3 = (api(lab, h) for h in ("h1", "h2", "h3"))
    wait_for(lambda: reaches(h1, "h2") and reaches(h3, "h2"), what="h1 and h3 route to h2")
    wait_for(lambda: resolves(h1, "h2-c1") and resolves(h3, "h2-c1"), what="h2-c1 resolves")
    victim = peer_name(h2)
    (own,) = [e for e in h2.get("/status/dns")["entries"] if e["local"]]
    record = own["records"][0]
    short = record["name"].split(".")[0]
    address = record["address"]
    entry = PeerEntry(victim, "h2", 1, MAX_VERSION, ())  # h2 with no connections: unreachable
    tombstone = Record(
        record["name"], address, record["container"], victim, MAX_VERSION, time.time()
    )
    ipam = h1.get("/status/ipam")
    ranges = {p["nickname"]: p["ranges"] for p in ipam["peers"]}
    first = int(ipaddress.IPv4Address(ranges["h2"][0].split("-")[0]))
    net = ipaddress.IPv4Network(ipam["range"])
    seed = tuple(parse_peer_name(p) for p in ipam["seed"])

    def ring_gossip(version: int, start: int = first) -> str:
        """h2's token at ``start`` (its first, or a new one inside its range), given to a peer
        that does not exist."""
        token = Token(start, start + 1, 0x0E0000000001, version, 0)
        lo = int(net.network_address)
        update = RingUpdate(lo, lo + net.num_addresses, seed, (token,), False)
        return bytes(msgpack.packb([1, update_obj(update), []])).hex()

    spec = [
        ["gossip", "topology", encode_entries([entry]).hex()],
        ["gossip", "dns", encode_records([tombstone]).hex()],
        ["gossip", "ipam", ring_gossip(MAX_VERSION)],
        # Plausible: h1 believes it, h2 bumps its token past it and wins it back.
        ["gossip", "ipam", ring_gossip(PLAUSIBLE_VERSION)],
        # A split of h2's range that h2 never made: h1 relays it in good faith, and h2 keeps
        # both the space and its connection to h1.
        ["gossip", "ipam", ring_gossip(5, start=first + 10)],
    ]
    attack(lab, spec, seconds=6.0)
    for client in (h1, h2, h3):
        shares = {p["nickname"]: p["ranges"] for p in client.get("/status/ipam")["peers"]}
        assert shares["h2"] == ranges["h2"]
    assert h1.get("/status/ipam")["forgeries"]["implausible_tokens"] >= 1
    assert h2.get("/status/ipam")["forgeries"]["reasserted_tokens"] >= 1
    # h2 is still reached from both sides, its name still resolves everywhere.
    for client in (h1, h3):
        assert reaches(client, "h2")
        peers = {p["nickname"]: p for p in client.get("/status/peers")}
        assert peers["h2"]["version"] < 1 << 40
        assert resolves(client, short) == [address]
    assert resolves(h2, short) == [address]
    assert h1.get("/status")["counters"].get("forgeries_dropped", 0) > 0
    assert h1.get("/status/dns")["records"]["implausible"] >= 1
    # And no connection was dropped over it: h2 still has both neighbours.
    assert {p["nickname"] for p in h2.get("/status/peers") if p["next_hop"]} == {"h1", "h3"}
