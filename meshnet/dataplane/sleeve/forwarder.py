"""The packet loops: TAP -> UDP and UDP -> TAP, each in its own OS thread.

Measured here, blocking OS threads move about twice what trio tasks do, and the crypto (cffi)
releases the GIL. The loops read forwarding state from an immutable `Snapshot` swapped by
reference (`update`), so they never lock; each loop writes only its own counters.

TCP super-frames (up to 64 KiB, from the TAP's GSO offload) travel as one datagram per TCP
segment, sent in one `sendmsg` with UDP GSO and received coalesced with UDP GRO: a lost datagram
costs only the segment it carried. Small frames are batched per next hop and flushed as soon as
the TAP has nothing more to give, so they never wait.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import random
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshnet.dataplane.sleeve import wire as wire
from meshnet.dataplane.sleeve.switch import Decision, Switch
from meshnet.dataplane.sleeve.vnet import (
    VNET_HEADER_SIZE,
    VnetHeader,
    icmp_too_big,
    parse_vnet,
    plan_tcp_segments,
)
from meshnet.dataplane.tap import Tap
from meshnet.dataplane.udp import (
    MessageTooBig,
    UdpSendError,
    receive_run,
    send_run,
    send_segments,
)
from meshnet.errors import RemoteProtocolError
from meshnet.gossip.routes import Routes

log = logging.getLogger("meshnet.dataplane")

MAX_TTL = 32
POLL_MS = 200
_CONTROL = frozenset({wire.Kind.HEARTBEAT, wire.Kind.PROBE, wire.Kind.PROBE_ACK})
_DATA = frozenset({wire.Kind.FRAMES, wire.Kind.SEGMENT})


class Sequences:
    """A neighbour's datagram sequence numbers, handed out in blocks across threads.

    A super-frame's datagrams take consecutive numbers in one call, so they can be sealed in
    one pass; the lock is taken once per block, not per datagram.
    """

    def __init__(self, start: int = 1) -> None:
        self._next = start
        self._lock = threading.Lock()

    def take(self, count: int = 1) -> int:
        with self._lock:
            first = self._next
            self._next += count
            return first


@dataclass(frozen=True)
class Neighbour:
    name: int
    address: tuple[str, int]
    send_key: bytes | None
    receive_key: bytes | None
    sequences: Sequences  # shared by both loops and the control plane
    window: wire.ReplayWindow  # used by the receive thread only
    max_datagram: int  # largest UDP payload the path is known to carry (0: unknown yet)
    established: bool


@dataclass(frozen=True)
class Snapshot:
    local: int
    routes: Routes
    neighbours: Mapping[int, Neighbour]
    overlay_mtu: int
    # Neighbours our own frames reach over the kernel's VXLAN, and the MACs the bridge sends to
    # the VXLAN port: the sleeve must not send what VXLAN carries (see fastdp_service.py).
    fastdp: frozenset[int] = frozenset()
    fastdp_macs: frozenset[bytes] = frozenset()

    def key_for(self, hop: int) -> bytes | None:
        neighbour = self.neighbours.get(hop)
        return neighbour.receive_key if neighbour else None

    def window_for(self, hop: int) -> wire.ReplayWindow | None:
        neighbour = self.neighbours.get(hop)
        return neighbour.window if neighbour else None


class _Counts:
    """One thread's counters: per peer [frames, bytes], and drops by reason."""

    def __init__(self) -> None:
        self.per_peer: collections.defaultdict[int, list[int]] = collections.defaultdict(
            lambda: [0, 0]
        )
        self.drops: collections.Counter[str] = collections.Counter()

    def add(self, peer: int, datagrams: int, size: int) -> None:
        row = self.per_peer[peer]
        row[0] += datagrams
        row[1] += size


ControlCallback = Callable[[wire.DatagramHeader, bytes, Any], None]
TooBigCallback = Callable[[int, int], None]


class Forwarder:
    def __init__(
        self,
        *,
        tap: Tap,
        sock: socket.socket,
        switch: Switch,
        snapshot: Snapshot,
        on_control: ControlCallback,
        on_too_big: TooBigCallback,
    ) -> None:
        self._tap = tap
        self._sock = sock
        self._switch = switch
        self._snapshot = snapshot
        self._on_control = on_control
        self._on_too_big = on_too_big
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._tx = _Counts()
        self._rx = _Counts()
        self._relayed = _Counts()  # written by the receive thread, like _rx
        # A random start, so a restarted sender is not mistaken for stale or duplicate data.
        self._superframe_ids = itertools.count(random.getrandbits(31))
        self._reassemblers: dict[int, wire.Reassembler] = {}

    def start(self) -> None:
        for name, loop in (("sleeve-tx", self._tx_loop), ("sleeve-rx", self._rx_loop)):
            thread = threading.Thread(target=self._guard, args=(loop,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)

    def update(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot  # one reference store: the loops see old or new, never half

    def statistics(self) -> dict[str, Any]:
        snap = self._snapshot

        def rows(counts: _Counts) -> dict[str, dict[str, int]]:
            return {
                _peer_text(peer): {"datagrams": row[0], "bytes": row[1]}
                for peer, row in list(counts.per_peer.items())
            }

        return {
            "sent": rows(self._tx),
            "received": rows(self._rx),
            "relayed": rows(self._relayed),
            "dropped": dict(self._tx.drops + self._rx.drops + self._relayed.drops),
            "routes": {
                _peer_text(dest): _peer_text(hop) for dest, hop in snap.routes.unicast.items()
            },
            "neighbours": len(snap.neighbours),
        }

    def _guard(self, loop: Callable[[], None]) -> None:
        """A bug in a packet loop is logged and the loop restarts; the daemon keeps going."""
        while not self._stop.is_set():
            try:
                loop()
            except Exception:
                log.exception("packet loop %s failed; restarting", threading.current_thread().name)
                time.sleep(0.5)

    # --- TAP -> UDP ----------------------------------------------------------------------------

    def _tx_loop(self) -> None:
        fd = self._tap.fileno()
        os.set_blocking(fd, False)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        batches: dict[tuple[int, int, int, int], wire.FrameBatcher] = {}
        while not self._stop.is_set():
            try:
                data = os.read(fd, 65536 + VNET_HEADER_SIZE)
            except BlockingIOError:
                self._flush(batches)
                poller.poll(POLL_MS)
                continue
            self._from_tap(data, batches)

    def _from_tap(
        self, data: bytes, batches: dict[tuple[int, int, int, int], wire.FrameBatcher]
    ) -> None:
        snap = self._snapshot
        if len(data) < VNET_HEADER_SIZE + 14:
            self._tx.drops["runt"] += 1
            return
        frame = memoryview(data)[VNET_HEADER_SIZE:]  # a super-frame is 64 KiB: no copy
        destination_mac = data[VNET_HEADER_SIZE : VNET_HEADER_SIZE + 6]
        decision, peer = self._switch.from_local(
            data[VNET_HEADER_SIZE + 6 : VNET_HEADER_SIZE + 12], destination_mac, time.monotonic()
        )
        if decision is Decision.UNICAST:
            if destination_mac in snap.fastdp_macs:
                self._tx.drops["on_fastdp"] += 1  # flooded by the bridge: VXLAN carried it
                return
            hop = snap.routes.next_hop(peer)
            if hop is None:
                self._tx.drops["unreachable"] += 1
                return
            targets = [(hop, peer, 0)]
        elif decision is Decision.FLOOD:
            targets = self._flood_targets(snap)
        else:
            return
        vnet_bytes = data[:VNET_HEADER_SIZE]
        if data[1] != 0:  # gso_type: a TCP super-frame
            # Small frames queued before it go first: under load the TAP is never empty, and
            # they must neither wait for it to drain nor be overtaken (reordering hurts TCP).
            self._flush(batches)
            vnet = parse_vnet(vnet_bytes)
            superframe_id = next(self._superframe_ids)
            for hop, destination, flags in targets:
                self._send_superframe(snap, hop, destination, flags, superframe_id, vnet, frame)
            return
        for hop, destination, flags in targets:
            neighbour = snap.neighbours.get(hop)
            if neighbour is None:
                self._tx.drops["no_path"] += 1
                continue
            limit = self._frame_limit(neighbour)
            if len(frame) > limit + 14:
                self._too_big(frame, limit)
                continue
            budget = self._datagram_budget(neighbour)
            key = (hop, destination, flags, budget)  # a new path MTU starts a new batcher
            batch = batches.get(key)
            if batch is None:
                batch = batches[key] = wire.FrameBatcher(budget)
            full = batch.add(vnet_bytes, frame)
            if full is not None:
                self._send_frames(snap, hop, destination, flags, full)

    @staticmethod
    def _flood_targets(snap: Snapshot) -> list[tuple[int, int, int]]:
        """``(hop, destination, flags)`` for a frame from the bridge that goes everywhere.

        Without fastdp: down our broadcast tree. With it, VXLAN already reached the fastdp
        neighbours, so every other peer gets its own copy, relayed by destination; a tree would
        pass through (and deliver at) the very neighbours VXLAN reached.
        """
        if not snap.fastdp:
            return [(hop, 0, wire.BROADCAST) for hop in snap.routes.broadcast_hops(snap.local)]
        return [
            (hop, peer, 0)
            for peer, hop in snap.routes.unicast.items()
            if peer != snap.local and peer not in snap.fastdp
        ]

    def _flush(self, batches: dict[tuple[int, int, int, int], wire.FrameBatcher]) -> None:
        snap = self._snapshot
        for (hop, destination, flags, _), batch in batches.items():
            body = batch.take()
            if body:
                self._send_frames(snap, hop, destination, flags, body)

    def _datagram_budget(self, neighbour: Neighbour) -> int:
        """Body bytes that fit one datagram on this path."""
        mtu = neighbour.max_datagram or (
            self._snapshot.overlay_mtu + wire.ENCAPSULATION_OVERHEAD - wire.UNDERLAY_HEADERS
        )
        return mtu - wire.HEADER_SIZE - (wire.TAG_SIZE if neighbour.send_key else 0)

    def _frame_limit(self, neighbour: Neighbour) -> int:
        """Largest IP packet (frame minus Ethernet header) this path carries in one datagram."""
        budget = self._datagram_budget(neighbour) - 2 - VNET_HEADER_SIZE - 14
        return min(budget, self._snapshot.overlay_mtu)

    def _too_big(self, frame: wire.Buffer, mtu: int) -> None:
        """Answer like a router would, so the sender's path-MTU discovery shrinks its packets."""
        self._tx.drops["too_big"] += 1
        reply = icmp_too_big(frame, mtu)
        if reply is not None:
            self._tap.write(bytes(VNET_HEADER_SIZE), reply)

    def _send_superframe(
        self,
        snap: Snapshot,
        hop: int,
        destination: int,
        flags: int,
        superframe_id: int,
        vnet: VnetHeader,
        frame: wire.Buffer,
    ) -> None:
        neighbour = snap.neighbours.get(hop)
        if neighbour is None:
            self._tx.drops["no_path"] += 1
            return
        try:
            plan = plan_tcp_segments(vnet, frame)
        except RemoteProtocolError:
            self._tx.drops["unsupported_superframe"] += 1  # e.g. VLAN-tagged: not carried
            return
        budget = self._datagram_budget(neighbour)
        segment_body = wire.SEGMENT_OVERHEAD + plan.header_len + plan.gso_size
        if segment_body > budget:
            # The segments' size comes from the sender's MSS: tell it the MTU that fits.
            overhead = segment_body - self._snapshot.overlay_mtu
            self._too_big(frame, max(576, budget - overhead))
            return
        first = wire.DatagramHeader(
            kind=wire.Kind.SEGMENT,
            flags=flags,
            ttl=MAX_TTL,
            origin=snap.local,
            destination=destination,
            hop=snap.local,
            sequence=neighbour.sequences.take(plan.segments),
        )
        try:
            run = wire.encode_superframe(
                first, superframe_id, vnet, frame, neighbour.send_key, plan
            )
        except (RemoteProtocolError, ValueError):
            self._tx.drops["unsupported_superframe"] += 1
            return
        try:
            send_run(self._sock, run.data, run.stride, neighbour.address)
        except UdpSendError as e:
            self._send_failed(neighbour, e, self._tx)
            return
        self._tx.add(neighbour.name, run.datagram_count, len(run.data))

    def _send_frames(
        self, snap: Snapshot, hop: int, destination: int, flags: int, body: bytes
    ) -> None:
        neighbour = snap.neighbours.get(hop)
        if neighbour is None:
            self._tx.drops["no_path"] += 1
            return
        header = wire.DatagramHeader(
            kind=wire.Kind.FRAMES,
            flags=flags,
            ttl=MAX_TTL,
            origin=snap.local,
            destination=destination,
            hop=snap.local,
            sequence=neighbour.sequences.take(),
        )
        self._send(neighbour, [wire.encode_datagram(header, body, neighbour.send_key)], self._tx)

    def _send(
        self, neighbour: Neighbour, datagrams: list[bytes | bytearray], counts: _Counts
    ) -> None:
        try:
            send_segments(self._sock, datagrams, neighbour.address)
        except UdpSendError as e:
            self._send_failed(neighbour, e, counts)
            return
        counts.add(neighbour.name, len(datagrams), sum(len(d) for d in datagrams))

    def _send_failed(self, neighbour: Neighbour, error: UdpSendError, counts: _Counts) -> None:
        if isinstance(error, MessageTooBig):
            counts.drops["send_too_big"] += 1
            self._on_too_big(neighbour.name, error.size)  # the path shrank: search again
        else:
            counts.drops[f"send_{error.reason}"] += 1

    # --- UDP -> TAP ----------------------------------------------------------------------------

    def _rx_loop(self) -> None:
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        self._sock.setblocking(False)
        while not self._stop.is_set():
            try:
                data, stride, addr = receive_run(self._sock)
            except BlockingIOError:
                if not poller.poll(2 if self._reassemblers_pending() else POLL_MS):
                    self._flush_reassembly(time.monotonic(), idle=True)
                continue
            except OSError:
                self._rx.drops["receive_error"] += 1
                continue
            forwards: dict[int, list[bytes | bytearray]] = {}
            snap = self._snapshot
            now = time.monotonic()
            if not data:
                self._rx.drops["short"] += 1
            else:
                run = wire.DatagramRun(data, stride)
                if not self._receive_uniform(snap, run, addr, now):
                    self._receive_batch(snap, run.datagrams(), addr, forwards, now)
            for hop, out in forwards.items():
                neighbour = snap.neighbours.get(hop)
                if neighbour is not None:
                    self._send(neighbour, out, self._relayed)
            self._flush_reassembly(time.monotonic(), idle=False)

    def _receive_uniform(
        self, snap: Snapshot, run: wire.DatagramRun, addr: Any, now: float
    ) -> bool:
        """The bulk case as a whole: a GRO run of SEGMENTs for us from one hop, all alike but
        for their sequence and index, so one header check, one count and one reassembly step
        cover them all (sealed ones are opened in one pass). False: not that case, take the
        datagrams one by one."""
        data, stride = run
        if len(data) <= stride or data[1] != wire.Kind.SEGMENT:
            return False
        try:
            header = wire.parse_header(data)
        except wire.DatagramError:
            return False  # the one-by-one path drops and counts each
        neighbour = snap.neighbours.get(header.hop)
        if (
            header.destination != snap.local
            or neighbour is None
            or neighbour.address[0] != addr[0]
            or bool(header.flags & wire.SEALED) != (neighbour.receive_key is not None)
        ):
            return False
        bodies: list[wire.Buffer]
        if neighbour.receive_key is None:
            if not wire.uniform_segments(run):
                return False
            offset = wire.HEADER_SIZE
            bodies = [data[i + offset : i + stride] for i in range(0, len(data), stride)]
            uniform = True
        else:
            if not wire.same_heads(run):
                return False
            opened, indexes, drops = wire.open_run(run, neighbour.receive_key, neighbour.window)
            for reason in drops:
                self._rx.drops[reason.value] += 1
            uniform = not drops and wire.uniform_segments(opened, offset=0)
            bodies = opened.datagrams()
            if drops:
                bodies = [bodies[i] for i in indexes]
        self._rx.add(header.hop, len(bodies), len(data))
        origin = header.origin
        reassembler = self._reassemblers.get(origin)
        if reassembler is None:
            reassembler = self._reassemblers[origin] = wire.Reassembler()
        frames: list[tuple[wire.Buffer, wire.Buffer]] = []
        if uniform:
            try:
                frames = reassembler.add_uniform(bodies, now)
            except wire.DatagramError as e:
                self._rx.drops[e.reason.value] += len(bodies)
        else:
            for body in bodies:
                try:
                    frames += reassembler.add(body, now)
                except wire.DatagramError as e:
                    self._rx.drops[e.reason.value] += 1
        if frames:
            self._write_frames(origin, frames, False, now)
        return True

    def _receive_batch(
        self,
        snap: Snapshot,
        datagrams: list[wire.Buffer],
        addr: Any,
        forwards: dict[int, list[bytes | bytearray]],
        now: float,
    ) -> None:
        """The datagrams of one receive (GRO glues a super-frame's together).

        The bulk case, SEGMENTs for us from one hop and one origin, runs inline with the hop
        checked and counted once per run; everything else goes through :meth:`_dispatch`.
        Frames are written in arrival order.
        """
        local = snap.local
        key_for, window_for = snap.key_for, snap.window_for
        decode = wire.decode_datagram
        segment = wire.Kind.SEGMENT
        counts = self._rx
        hop_seen = origin_seen = -1
        received = size = 0
        reassembler: wire.Reassembler | None = None
        ready: list[tuple[wire.Buffer, wire.Buffer]] = []
        for data in datagrams:
            try:
                # Unknown senders get no key: in an encrypted mesh their datagrams cannot pass.
                header, body = decode(data, key_for, window_for)
            except wire.DatagramError as e:
                counts.drops[e.reason.value] += 1
                continue
            hop = header.hop
            if hop != hop_seen:
                if received:
                    counts.add(hop_seen, received, size)
                    received = size = 0
                neighbour = snap.neighbours.get(hop)
                if neighbour is None or neighbour.address[0] != addr[0]:
                    counts.drops["unknown_sender"] += 1
                    hop_seen = -1
                    continue
                hop_seen = hop
            received += 1
            size += len(data)
            if header.kind is segment and header.destination == local:  # never BROADCAST
                origin = header.origin
                if origin != origin_seen:
                    if ready:
                        self._write_frames(origin_seen, ready, False, now)
                        ready = []
                    reassembler = self._reassemblers.get(origin)
                    if reassembler is None:
                        reassembler = self._reassemblers[origin] = wire.Reassembler()
                    origin_seen = origin
                assert reassembler is not None
                try:
                    ready += reassembler.add(body, now)
                except wire.DatagramError as e:
                    counts.drops[e.reason.value] += 1
                continue
            if ready:
                self._write_frames(origin_seen, ready, False, now)
                ready = []
            self._dispatch(snap, header, body, addr, forwards, now)
        if ready:
            self._write_frames(origin_seen, ready, False, now)
        if received:
            counts.add(hop_seen, received, size)

    def _dispatch(
        self,
        snap: Snapshot,
        header: wire.DatagramHeader,
        body: wire.Buffer,
        addr: Any,
        forwards: dict[int, list[bytes | bytearray]],
        now: float,
    ) -> None:
        """A checked datagram from a known neighbour: control, flood, delivery or relay."""
        if header.kind in _CONTROL:
            self._on_control(header, bytes(body), addr)
            return
        if header.flags & wire.BROADCAST:
            self._deliver(header, body, now, flooded=True)
            for hop in snap.routes.broadcast_hops(header.origin):
                if hop != header.hop:
                    self._relay(snap, header, body, hop, forwards)
        elif header.destination == snap.local:
            self._deliver(header, body, now, flooded=False)
        else:
            next_hop = snap.routes.next_hop(header.destination)
            if next_hop is None:
                self._rx.drops["unreachable"] += 1
            else:
                self._relay(snap, header, body, next_hop, forwards)

    def _relay(
        self,
        snap: Snapshot,
        header: wire.DatagramHeader,
        body: wire.Buffer,
        hop: int,
        forwards: dict[int, list[bytes | bytearray]],
    ) -> None:
        """Pass a datagram on toward its destination, sealed anew for the next pair."""
        neighbour = snap.neighbours.get(hop)
        if neighbour is None or header.ttl <= 1:
            self._rx.drops["ttl" if header.ttl <= 1 else "no_path"] += 1
            return
        relayed = wire.DatagramHeader(
            kind=header.kind,
            flags=header.flags & wire.BROADCAST,
            ttl=header.ttl - 1,
            origin=header.origin,
            destination=header.destination,
            hop=snap.local,
            sequence=neighbour.sequences.take(),
        )
        forwards.setdefault(hop, []).append(wire.encode_datagram(relayed, body, neighbour.send_key))

    def _deliver(
        self, header: wire.DatagramHeader, body: wire.Buffer, now: float, *, flooded: bool
    ) -> None:
        if header.kind == wire.Kind.FRAMES:
            try:
                frames = wire.split_frames(body)
            except wire.DatagramError as e:
                self._rx.drops[e.reason.value] += 1
                return
        else:
            reassembler = self._reassemblers.get(header.origin)
            if reassembler is None:
                reassembler = self._reassemblers[header.origin] = wire.Reassembler()
            try:
                frames = reassembler.add(body, now)
            except wire.DatagramError as e:
                self._rx.drops[e.reason.value] += 1
                return
        if frames:
            self._write_frames(header.origin, frames, flooded, now)

    def _write_frames(
        self, origin: int, frames: list[tuple[wire.Buffer, wire.Buffer]], flooded: bool, now: float
    ) -> None:
        for vnet, frame in frames:
            if len(frame) < 14:
                self._rx.drops["runt"] += 1
                continue
            src, dst = bytes(frame[6:12]), bytes(frame[0:6])  # views would pin the buffer
            decision, _ = self._switch.from_peer(origin, src, dst, now, flooded)
            if decision is Decision.DELIVER or decision is Decision.FLOOD:
                self._tap.write(vnet, frame)
            else:
                self._rx.drops["switch"] += 1

    def _reassemblers_pending(self) -> bool:
        return any(r.pending() for r in self._reassemblers.values())

    def _flush_reassembly(self, now: float, *, idle: bool) -> None:
        """Deliver what is left of super-frames that lost a segment: only the lost part is lost."""
        for origin, reassembler in self._reassemblers.items():
            frames = reassembler.flush(now, older_than=now if idle else now - 0.005)
            if frames:
                self._write_frames(origin, frames, False, now)


def _peer_text(peer: int) -> str:
    from meshnet.gossip.identity import format_peer_name

    return format_peer_name(peer)
