"""A container forges fastdp probes: the bridge drops them before any router reads one.

fastdp proves a neighbour's VXLAN path with probe frames (ethertype 0x88B5, magic ``MNFP``) sent
to the neighbour's probe MAC, a local address of its bridge. The router reads them from a packet
socket on the bridge, which cannot tell which port a frame came in by, and a probe names its
sender in the clear. A container on the bridge could therefore send frames that claim to be
probes: here one on h1 sprays

- malformed probes (version 2) to h1's probe MAC, and through the overlay (VXLAN) to h2's: a
  router that read them would count ``probes_malformed``;
- ECHOs that claim to come from h2, to h1's probe MAC: h1 would take each for h2's latest probe
  and answer it instead of h2's real one, so h2 would hear no answers and move its traffic to h1
  onto the sleeve (a denial of service that needs no guessed probe id);
- the same ECHO to everyone (broadcast), which no container may see either, and behind a VLAN
  tag (dropped as a protocol containers may not use);

and, as a control, ordinary frames of the same ethertype without the magic to h2's container,
which must arrive. The isolation table drops every frame that claims to be a probe and counts it
as ``spoofed``. The second test shows the harm a forged answer did: with h1's VXLAN path to h2
dead, answers forged in h2's name kept h1 sending into it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from meshnet.constants import FASTDP_PORT, FASTDP_PROBE_MAGIC
from meshnet.dataplane.fastdp import core as fastdp
from meshnet.dataplane.fastdp.core import Probe, ProbeKind
from meshnet.gossip.identity import parse_peer_name
from tests.net.conftest import ns_run
from tests.net.test_fastdp import host_ns, paths, wait_paths
from tests.net.test_mesh import api
from tests.net.test_overlay import containers, dataplane, wait_ping

pytestmark = pytest.mark.netns

SPRAY_SECONDS = 10  # h2 gives up on an unanswered neighbour after 5 s
BLOCKED_SECONDS = 15  # h1 gives up on h2 5 s after the block
_BLOCK = "pfx_block_vxlan"  # the test's own table in h2's namespace


@pytest.fixture(autouse=True)
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHNET_HEARTBEAT_INTERVAL", "1")


# Sends each named frame (hex, in the JSON file argv[3]) for argv[1] seconds from ethwe, all of
# them every argv[2] seconds; prints how many of each the kernel took.
_SPRAY = textwrap.dedent(
    """
    import json, socket, sys, time
    with open(sys.argv[3]) as f:
        frames = {name: bytes.fromhex(h) for name, h in json.load(f).items()}
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("ethwe", 0))
    sent = dict.fromkeys(frames, 0)
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end:
        for name, frame in frames.items():
            try:
                s.send(frame); sent[name] += 1
            except OSError:  # ENOBUFS: the queue is full, go on
                pass
        time.sleep(float(sys.argv[2]))
    print(json.dumps(sent))
    """
)

# Counts the frames of the probes' ethertype that reach ethwe: those claiming to be probes
# (the magic) and the others.
_LISTEN = textwrap.dedent(
    """
    import json, socket, sys, time
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(int(sys.argv[1])))
    s.bind(("ethwe", 0)); s.settimeout(0.1)
    magic = bytes.fromhex(sys.argv[2]); seen = {"claims": 0, "ordinary": 0}
    end = time.monotonic() + float(sys.argv[3])
    print("ready", flush=True)
    while time.monotonic() < end:
        try:
            data, address = s.recvfrom(2048)
        except TimeoutError:
            continue
        if address[2] != socket.PACKET_OUTGOING:
            seen["claims" if data[14:18] == magic else "ordinary"] += 1
    print(json.dumps(seen))
    """
)


def _peer(state: dict[str, Any], host: str) -> int:
    return parse_peer_name(api(state, host).get("/status")["name"])


def _fastdp_counters(state: dict[str, Any], host: str) -> dict[str, int]:
    return dict(dataplane(state, host)["fastdp"]["counters"])


def _downs(state: dict[str, Any], host: str, peer: int) -> int:
    """How often ``host`` has moved ``peer`` off fastdp since it started."""
    fast = dataplane(state, host)["fastdp"]
    from_peers = {parse_peer_name(name): info for name, info in fast["peers"].items()}
    return int(from_peers[peer]["downs"])


def _dropped(state: dict[str, Any], host: str, counter: str = "spoofed") -> int:
    """A drop counter of ``host``'s isolation table."""
    return int(api(state, host).get("/status/ramps")["dropped"][counter])


def _frame_file(directory: Path, frames: dict[str, bytes]) -> str:
    path = directory / "frames.json"
    path.write_text(json.dumps({name: frame.hex() for name, frame in frames.items()}))
    return str(path)


def _frames(source: str, h1: int, h2: int, friend_mac: str) -> dict[str, bytes]:
    """What h1's container sends: frames that claim to be probes, and an ordinary one."""

    def claim(probe: Probe, destination: str) -> bytes:
        return fastdp.encode_probe(probe, source=source, destination=destination, size=60)

    def malformed(destination: str) -> bytes:
        frame = bytearray(claim(Probe(ProbeKind.PROBE, h2, 1), destination))
        frame[20:22] = (2).to_bytes(2, "big")  # a version no router speaks: counted as malformed
        return bytes(frame)

    forged_echo = Probe(ProbeKind.ECHO, h2, fastdp.random_probe_id(), fastdp.random_probe_id())
    echo = claim(forged_echo, fastdp.probe_mac(h1))
    tagged = echo[:12] + b"\x81\x00\x00\x00" + echo[12:]  # VLAN 0: the same ECHO behind a tag
    ordinary = fastdp.ETHERTYPE.to_bytes(2, "big") + b"hello, not a probe"
    return {
        "malformed_to_h1": malformed(fastdp.probe_mac(h1)),
        "malformed_to_h2": malformed(fastdp.probe_mac(h2)),  # through VXLAN
        "forged_echo_to_h1": echo,
        "tagged_echo_to_h1": tagged,  # dropped as a protocol containers may not use
        "forged_echo_to_all": claim(forged_echo, "ff:ff:ff:ff:ff:ff"),
        "ordinary": (
            bytes.fromhex(friend_mac.replace(":", ""))
            + bytes.fromhex(source.replace(":", ""))
            + ordinary.ljust(48, b"\0")
        ),
    }


def _pair_on_fastdp(
    make_lab: Any,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], int, int]:
    """A 2-host line on fastdp both ways: the lab, h1's container (the attacker), h2's, and
    the two routers' names."""
    state = make_lab("line", hosts=2, containers=1)
    c = containers(state)
    attacker, friend = c["h1-c1"], c["h2-c1"]
    wait_paths(state, "h1", {"h2": "fastdp"})
    wait_paths(state, "h2", {"h1": "fastdp"})
    wait_ping(attacker, friend)
    h1, h2 = _peer(state, "h1"), _peer(state, "h2")
    return state, attacker, friend, h1, h2


def test_a_container_cannot_forge_fastdp_probes_locally_or_through_the_overlay(
    make_lab: Any, tmp_path: Path
) -> None:
    state, attacker, friend, h1, h2 = _pair_on_fastdp(make_lab)
    counters_before = {host: _fastdp_counters(state, host) for host in ("h1", "h2")}
    downs_before = _downs(state, "h2", h1), _downs(state, "h1", h2)
    spoofed_before = _dropped(state, "h1")
    protocol_before = _dropped(state, "h1", "protocol")
    frames = _frames(attacker["mac"], h1, h2, friend["mac"])

    listener = subprocess.Popen(
        ["ip", "netns", "exec", friend["namespace"], sys.executable, "-c", _LISTEN,
         str(fastdp.ETHERTYPE), FASTDP_PROBE_MAGIC.hex(), str(SPRAY_SECONDS + 3)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        spray = subprocess.run(
            ["ip", "netns", "exec", attacker["namespace"], sys.executable, "-c", _SPRAY,
             str(SPRAY_SECONDS), "0.01", _frame_file(tmp_path, frames)],
            capture_output=True, text=True, timeout=SPRAY_SECONDS + 30,
        )  # fmt: skip
        assert spray.returncode == 0, spray.stderr
        sent = json.loads(spray.stdout)
        seen = json.loads(listener.communicate(timeout=30)[0])
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()

    claims = sum(n for name, n in sent.items() if name not in ("ordinary", "tagged_echo_to_h1"))
    assert min(sent.values()) > 100, sent
    # The control: the container's own frames of the probes' ethertype still cross the mesh.
    assert seen["ordinary"] >= sent["ordinary"] * 0.9, (seen, sent)
    # No claim reached a container, nor either router's probe socket ...
    assert seen["claims"] == 0, seen
    for host in ("h1", "h2"):
        after = _fastdp_counters(state, host)
        for counter in ("probes_malformed", "probes_misaddressed", "probes_from_stranger"):
            assert after.get(counter, 0) == counters_before[host].get(counter, 0), (host, after)
    # ... so h2 kept hearing h1's answers to its own probes, and both kept VXLAN.
    assert (_downs(state, "h2", h1), _downs(state, "h1", h2)) == downs_before
    assert paths(state, "h1")["h2"] == "fastdp" and paths(state, "h2")["h1"] == "fastdp"
    # Every claim was dropped at h1's bridge and counted as the container spoofing the router.
    assert _dropped(state, "h1") - spoofed_before >= claims, (claims, spoofed_before)
    protocol = _dropped(state, "h1", "protocol") - protocol_before
    assert protocol >= sent["tagged_echo_to_h1"], (protocol, sent)


def test_forged_answers_cannot_keep_a_dead_vxlan_path_up(make_lab: Any, tmp_path: Path) -> None:
    """The harm itself: UDP 6784 into h2 is blocked, so h1's frames to h2 over VXLAN vanish,
    while h1's container answers h1's probes in h2's name (sweeping the ids a count would give).
    h1 must still notice and move its traffic to h2 onto the sleeve, or it black-holes it.
    Either fix stops the harm (the bridge drops the forgeries; random probe ids make the sweep
    miss): with both undone, h1 kept fastdp to h2 here; without the drop, the count fails."""
    state, attacker, friend, h1, h2 = _pair_on_fastdp(make_lab)
    frames = {
        f"echo{guess}": fastdp.encode_probe(
            Probe(ProbeKind.ECHO, h2, fastdp.random_probe_id(), guess),
            source=attacker["mac"],
            destination=fastdp.probe_mac(h1),
            size=60,
        )
        for guess in range(1, 201)
    }
    spoofed_before = _dropped(state, "h1")
    spray = subprocess.Popen(
        ["ip", "netns", "exec", attacker["namespace"], sys.executable, "-c", _SPRAY,
         str(BLOCKED_SECONDS), "0.1", _frame_file(tmp_path, frames)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    h2_ns = host_ns(state, "h2")
    block = (
        f"table inet {_BLOCK} {{\n chain input {{\n"
        "  type filter hook input priority -300; policy accept;\n"
        f"  udp dport {FASTDP_PORT} drop\n }}\n}}\n"
    )
    try:
        subprocess.run(
            ["ip", "netns", "exec", h2_ns, "nft", "-f", "-"], input=block, text=True, check=True
        )
        wait_paths(state, "h1", {"h2": "sleeve"}, timeout=BLOCKED_SECONDS - 2)
        wait_ping(attacker, friend, timeout=10)  # over the sleeve: nothing black-holed
        sent = sum(json.loads(spray.communicate(timeout=BLOCKED_SECONDS + 30)[0]).values())
    finally:
        ns_run(h2_ns, "nft", "delete", "table", "inet", _BLOCK)
        if spray.poll() is None:
            spray.kill()
            spray.wait()
    assert sent > 1000
    assert _dropped(state, "h1") - spoofed_before >= sent
