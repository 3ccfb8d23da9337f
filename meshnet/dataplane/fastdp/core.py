"""Fast datapath: kernel VXLAN to directly reachable peers, the sleeve for everyone else (pure).

Frames between a local container and a fastdp neighbour never enter Python: the bridge sends
them to the VXLAN device, whose forwarding table the daemon programs. This module decides *what*
to program; ``service.py`` programs it.

**The sender decides.** Each peer chooses, per neighbour, whether what *it* sends goes over VXLAN
or the sleeve; a receiver accepts both. So no frame is ever carried twice as long as each sender
sends every frame one way only: VXLAN floods reach exactly the fastdp neighbours (one all-zero
entry each), and the sleeve's floods deliver nowhere else (the forwarder's snapshot lists them;
they only pass the sleeve's copy on, see ``sleeve/forwarding.py``). Both bridge
ports, VXLAN and the sleeve's TAP, are *isolated*: the kernel never forwards a frame from one to
the other, so nothing arriving one way leaves the other way, and no loop forms.

**A neighbour is on fastdp** only when both sides want it (each tells the other in an
`Advertisement`, with the MACs behind it) and probes prove the VXLAN path both ways: a full-size
frame to the neighbour's *probe MAC* (a local address on its bridge, so its daemon reads it on an
AF_PACKET socket) is answered the same way. A full-size probe fails on MTU trouble too. Without
an answer for ``down_after`` seconds the neighbour falls back to the sleeve, and is retried every
``retry_interval``.

**One probe each way, not two.** A neighbour that advertises ``echo`` is probed with ECHO
frames: each carries, besides its own id, the id of the neighbour's latest probe (and how long
we held it), so it answers that probe as it goes. An idle pair then exchanges one frame each way
per interval instead of a probe and an ack each way: each frame wakes a router, and for an idle
mesh these were the largest part of its CPU. A side that is not up answers an ECHO at once, so a
pair still comes up in a round trip or two; peers that do not advertise ``echo`` get PROBE and
ACK as before.

**Two families.** A Linux VXLAN device sends and receives in one address family, and an FDB
entry of the other family is refused (EAFNOSUPPORT), so there are two devices on the bridge,
``vxlan-6784`` for IPv4 neighbours and ``vxlan6-6784`` for IPv6 ones (both isolated ports, same
VNI and port, measured to coexist); each neighbour's entries go to the device of its underlay
address's family. A host without IPv6 has only the first: its IPv6 neighbours stay on the sleeve.

**Programming.** For every candidate neighbour: its probe MAC, pinned on the VXLAN port and sent
to its underlay address. For every neighbour that is up: a flood entry, and each MAC it
advertised, pinned on the VXLAN port (the port learns nothing) and sent to its address. A MAC two
neighbours claim (a container that moved) belongs to the one that claimed it last.
"""

from __future__ import annotations

import enum
import ipaddress
import secrets
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import msgpack

from meshnet.beats import next_beat
from meshnet.constants import FASTDP_PORT, FASTDP_PROBE_ETHERTYPE, FASTDP_PROBE_MAGIC
from meshnet.dataplane.sleeve.switch import derived_mac
from meshnet.errors import RemoteProtocolError
from meshnet.gossip.messages import MAX_PEER_NAME

DEVICE = f"vxlan-{FASTDP_PORT}"  # with the default port


def device_name(port: int, version: int = 4) -> str:
    """The VXLAN device is named after its UDP port, as Weave's (``vxlan-6784``); the one for
    IPv6 underlays ``vxlan6-6784`` (a VXLAN device sends and listens in one family only)."""
    return f"vxlan-{port}" if version == 4 else f"vxlan6-{port}"


def device_names(port: int) -> tuple[str, str]:
    """Both VXLAN devices, IPv4's first."""
    return device_name(port, 4), device_name(port, 6)


VNI = 6784
CHANNEL = "fastdp"
ETHERTYPE = FASTDP_PROBE_ETHERTYPE
FLOOD_MAC = "00:00:00:00:00:00"
MAX_ADVERTISED_MACS = 65536

_PROBE_MAGIC = FASTDP_PROBE_MAGIC
_PROBE_PREFIX = ETHERTYPE.to_bytes(2, "big") + _PROBE_MAGIC
_PROBE = struct.Struct("!4sBxHQI")  # magic, kind, pad, version, sender, probe id
_ECHO = struct.Struct("!II")  # after an ECHO's probe: the id it answers (0: none), held (us)
_ETHERNET = struct.Struct("!6s6sH")


class ProbeKind(enum.IntEnum):
    PROBE = 1
    ACK = 2
    ECHO = 3  # a probe that also answers the receiver's latest one


@dataclass(frozen=True)
class Probe:
    kind: ProbeKind
    sender: int
    probe_id: int
    echo_id: int = 0  # ECHO: the receiver's probe it answers (0: none heard lately)
    held_us: int = 0  # ECHO: how long the sender held that probe before answering


def probe_mac(peer: int) -> str:
    """The address a peer's bridge delivers to its daemon: unicast, locally administered."""
    return derived_mac(b"meshnet fastdp probe", peer)


def encode_probe(probe: Probe, *, source: str, destination: str, size: int) -> bytes:
    """An Ethernet frame of `size` bytes carrying `probe` (padding tests the path's MTU)."""
    head = _ETHERNET.pack(bytes.fromhex(destination.replace(":", "")), _mac(source), ETHERTYPE)
    body = _PROBE.pack(_PROBE_MAGIC, probe.kind, 1, probe.sender, probe.probe_id)
    if probe.kind is ProbeKind.ECHO:
        body += _ECHO.pack(probe.echo_id, min(max(probe.held_us, 0), 0xFFFFFFFF))
    return (head + body).ljust(max(size, len(head) + len(body)), b"\0")


def is_probe(frame: bytes) -> bool:
    """Whether `frame` claims to be a probe (its ethertype and magic); containers may send
    frames of the same ethertype, which are theirs and not probes."""
    offset = _ETHERNET.size - 2
    return frame[offset : offset + 2 + len(_PROBE_MAGIC)] == _PROBE_PREFIX


def decode_probe(frame: bytes) -> tuple[str, Probe]:
    """``(destination MAC, probe)``; RemoteProtocolError for anything else."""
    if len(frame) < _ETHERNET.size + _PROBE.size:
        raise RemoteProtocolError("probe frame too short")
    destination, _, ethertype = _ETHERNET.unpack_from(frame)
    magic, kind, version, sender, probe_id = _PROBE.unpack_from(frame, _ETHERNET.size)
    if ethertype != ETHERTYPE or magic != _PROBE_MAGIC or version != 1:
        raise RemoteProtocolError("not a fastdp probe")
    if kind not in tuple(ProbeKind) or not 0 < sender <= MAX_PEER_NAME:
        raise RemoteProtocolError("malformed fastdp probe")
    if kind != ProbeKind.ECHO:
        return destination.hex(":"), Probe(ProbeKind(kind), sender, probe_id)
    if len(frame) < _ETHERNET.size + _PROBE.size + _ECHO.size:
        raise RemoteProtocolError("fastdp echo too short")
    echo_id, held_us = _ECHO.unpack_from(frame, _ETHERNET.size + _PROBE.size)
    return destination.hex(":"), Probe(ProbeKind.ECHO, sender, probe_id, echo_id, held_us)


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


# --- advertisements -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Advertisement:
    """What a peer tells one neighbour: whether it wants fastdp with it, its local MACs, and
    its VXLAN port (a device sends to the port it listens on: both sides need the same one)."""

    willing: bool
    macs: frozenset[str] = frozenset()
    port: int = FASTDP_PORT  # peers from before --fastdp-port did not say: the default
    echo: bool = True  # it understands ECHO probes (peers from before them did not say: False)
    passing: bool = True  # it relays PASSING broadcasts on (from before them: did not say, False)


def encode_advertisement(ad: Advertisement) -> bytes:
    macs = sorted(_mac(m) for m in ad.macs)
    return bytes(
        msgpack.packb({"w": ad.willing, "m": macs, "p": ad.port, "e": ad.echo, "f": ad.passing})
    )


def decode_advertisement(payload: bytes) -> Advertisement:
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as e:
        raise RemoteProtocolError(f"undecodable fastdp advertisement: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("w"), bool):
        raise RemoteProtocolError("malformed fastdp advertisement")
    macs = data.get("m", [])
    if not isinstance(macs, list) or len(macs) > MAX_ADVERTISED_MACS:
        raise RemoteProtocolError("malformed fastdp advertisement: MAC list")
    for mac in macs:
        if not isinstance(mac, bytes) or len(mac) != 6 or mac[0] & 1 or mac == bytes(6):
            raise RemoteProtocolError("malformed fastdp advertisement: bad MAC")
    port = data.get("p", FASTDP_PORT)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise RemoteProtocolError("malformed fastdp advertisement: port")
    echo, passing = data.get("e", False), data.get("f", False)
    if not isinstance(echo, bool) or not isinstance(passing, bool):
        raise RemoteProtocolError("malformed fastdp advertisement: echo or passing")
    macs_seen = frozenset(m.hex(":") for m in macs)
    return Advertisement(willing=data["w"], macs=macs_seen, port=port, echo=echo, passing=passing)


def willing(
    *,
    enabled: bool,
    encrypted: bool,
    address: str,
    trusted: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> bool:
    """Whether we want fastdp with a neighbour at `address`: VXLAN carries frames in the clear."""
    if not enabled:
        return False
    if not encrypted:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


# --- probing ------------------------------------------------------------------------------------


class FastState(enum.Enum):
    PROBING = "probing"  # not yet answered: the sleeve carries the traffic meanwhile
    UP = "up"
    DOWN = "down"  # answers stopped (or never came): sleeve, retried every retry_interval


@dataclass
class ProbeStatistics:
    state: str
    sent: int
    answered: int
    rtt_ms: float | None
    ups: int
    downs: int


def random_probe_id() -> int:
    """A probe id nobody can guess (32 random bits, never 0: an ECHO's "answers none").

    Probes are not authenticated: an answer counts because it names a probe we sent. With
    sequential ids, a frame that reached the probe socket by some other way than VXLAN could
    answer the next probes by counting; the bridge drops containers' forgeries (``spoofed``),
    these ids are the second wall. One ``os.urandom`` read per probe: one a second or two each.
    """
    while True:
        probe_id = secrets.randbits(32)
        if probe_id:
            return probe_id


@dataclass
class PeerProbe:
    """One neighbour's VXLAN liveness, driven by ``tick`` and ``on_ack``; times are seconds.

    ``new_id`` gives each probe's id (random by default; tests pass their own)."""

    started: float
    # Each probe wakes both routers. Once a second while a pair comes up or changes; once
    # `settle_after` seconds have passed up without a change, every `settled_interval` (an
    # idle mesh's largest cost was these wake-ups). Five silent seconds move the traffic to
    # the sleeve: the neighbour may be settled, so that is two of its beats and a lost frame.
    interval: float = 1.0
    settled_interval: float = 2.0
    settle_after: float = 10.0
    down_after: float = 5.0
    retry_interval: float = 5.0
    state: FastState = FastState.PROBING
    new_id: Callable[[], int] = random_probe_id
    _up_since: float = 0.0
    _next_send: float = 0.0
    _last_answer: float | None = None
    _outstanding: dict[int, float] = field(default_factory=dict)
    _rtt: float | None = None
    _theirs: tuple[int, float] | None = None  # their latest probe's id, and when it came
    _sent: int = 0
    _answered: int = 0
    _ups: int = 0
    _downs: int = 0

    def __post_init__(self) -> None:
        self._next_send = self.started

    def tick(self, now: float) -> int | None:
        """Advance; the id of a probe to send now, if one is due."""
        heard = self._last_answer if self._last_answer is not None else self.started
        if self.state is not FastState.DOWN and now - heard > self.down_after:
            self.state = FastState.DOWN
            self._downs += 1
            self._next_send = now
        for probe_id, sent in list(self._outstanding.items()):
            if now - sent > self.down_after:
                del self._outstanding[probe_id]
        if now < self._next_send:
            return None
        probe_id = self._new_probe(now)
        # Retries of a DOWN neighbour keep their full interval; the rest goes on the beat.
        if self.state is FastState.DOWN:
            self._next_send = now + self.retry_interval
        else:
            self._next_send = next_beat(now, self.current_interval(now))
        return probe_id

    def current_interval(self, now: float) -> float:
        """The beat: slower once the neighbour has been up, unchanged, for `settle_after`."""
        if self.state is FastState.UP and now - self._up_since >= self.settle_after:
            return self.settled_interval
        return self.interval

    def answer_now(self, now: float) -> int:
        """The id of a probe sent off the beat (answering an ECHO); the schedule stays."""
        return self._new_probe(now)

    def _new_probe(self, now: float) -> int:
        probe_id = self.new_id()
        while probe_id in self._outstanding:  # a repeat would answer for two probes
            probe_id = self.new_id()
        self._outstanding[probe_id] = now
        self._sent += 1
        return probe_id

    def on_ack(self, now: float, probe_id: int, held: float = 0.0) -> bool:
        """An answer arrived (``held``: how long the neighbour held our probe before); True if
        it changed the state. Unknown or stale ids are ignored."""
        sent = self._outstanding.pop(probe_id, None)
        if sent is None:
            return False
        self._answered += 1
        self._rtt = max(0.0, now - sent - held)
        self._last_answer = now
        if self.state is FastState.UP:
            return False
        self.state = FastState.UP
        self._ups += 1
        self._up_since = now
        self._next_send = next_beat(now, self.interval)
        return True

    def on_echo(self, now: float, probe_id: int, echo_id: int, held_us: int) -> tuple[bool, bool]:
        """An ECHO arrived: their probe ``probe_id``, answering ours ``echo_id`` (0: none).
        ``(state changed, answer at once)``: a side not yet up answers without waiting for its
        beat, so a pair comes up within round trips, while an up pair sends one frame per
        interval each way."""
        self._theirs = (probe_id, now)
        changed = echo_id != 0 and self.on_ack(now, echo_id, held_us / 1e6)
        return changed, self.state is not FastState.UP

    def echo(self, now: float) -> tuple[int, int]:
        """What our next ECHO answers: their latest probe and how long we held it (microseconds),
        or ``(0, 0)`` when none came within ``down_after``."""
        if self._theirs is None or now - self._theirs[1] > self.down_after:
            return 0, 0
        probe_id, at = self._theirs
        # The shell's ``now`` may predate the arrival (read before an await): never below 0.
        return probe_id, max(0, round((now - at) * 1e6))

    @property
    def last_answer(self) -> float | None:
        return self._last_answer

    def next_wake(self) -> float:
        heard = self._last_answer if self._last_answer is not None else self.started
        deadline = heard + self.down_after if self.state is not FastState.DOWN else self._next_send
        return min(self._next_send, deadline)

    def statistics(self) -> ProbeStatistics:
        return ProbeStatistics(
            state=self.state.value,
            sent=self._sent,
            answered=self._answered,
            rtt_ms=round(self._rtt * 1000, 3) if self._rtt is not None else None,
            ups=self._ups,
            downs=self._downs,
        )


# --- what the kernel should hold ----------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A neighbour both sides want fastdp with."""

    address: str  # its underlay IP: where VXLAN packets for it go
    up: bool  # probes answered: its MACs and a flood entry go to VXLAN


@dataclass(frozen=True)
class KernelEntries:
    remotes: frozenset[tuple[str, str]]  # (MAC or FLOOD_MAC, underlay IP) in the VXLAN device
    pinned: frozenset[str]  # MACs the bridge sends to the VXLAN port


class MacOwners:
    """Which neighbour each advertised MAC lives behind; the latest claim wins."""

    def __init__(self) -> None:
        self._claims: dict[int, dict[str, int]] = {}  # peer -> mac -> claim order
        self._order = 0

    def update(self, peer: int, macs: frozenset[str]) -> None:
        old = self._claims.get(peer, {})
        claims = {}
        for mac in macs:
            if mac in old:
                claims[mac] = old[mac]
            else:
                self._order += 1
                claims[mac] = self._order
        self._claims[peer] = claims

    def forget(self, peer: int) -> None:
        self._claims.pop(peer, None)

    def owned(self, peers: Iterable[int], local: frozenset[str]) -> dict[int, set[str]]:
        """Each of `peers`' MACs that no later claim (among `peers`) or local MAC overrides."""
        best: dict[str, tuple[int, int]] = {}
        for peer in peers:
            for mac, order in self._claims.get(peer, {}).items():
                if mac not in local and (mac not in best or order > best[mac][0]):
                    best[mac] = (order, peer)
        owned: dict[int, set[str]] = {}
        for mac, (_, peer) in best.items():
            owned.setdefault(peer, set()).add(mac)
        return owned


def pins(entries: KernelEntries) -> frozenset[tuple[str, int]]:
    """Each pinned MAC with the IP version of the address its remote entry sends to (which
    device's port the bridge pins it on)."""
    return frozenset(
        (mac, 6 if ":" in ip else 4) for mac, ip in entries.remotes if mac in entries.pinned
    )


def kernel_entries(
    candidates: Mapping[int, Candidate], owners: MacOwners, local: frozenset[str]
) -> KernelEntries:
    remotes: set[tuple[str, str]] = set()
    pinned: set[str] = set()
    for peer, candidate in candidates.items():
        mac = probe_mac(peer)
        remotes.add((mac, candidate.address))
        pinned.add(mac)
    up = [peer for peer, c in candidates.items() if c.up]
    for peer, macs in owners.owned(up, local).items():
        address = candidates[peer].address
        remotes.update((mac, address) for mac in macs)
        pinned.update(macs)
    for peer in up:
        remotes.add((FLOOD_MAC, candidates[peer].address))
    return KernelEntries(frozenset(remotes), frozenset(pinned))
