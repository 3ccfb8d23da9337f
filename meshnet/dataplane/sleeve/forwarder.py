"""The packet loops: TAP -> UDP and UDP -> TAP, each in its own OS thread.

Measured here, blocking OS threads move about twice what trio tasks do, and the crypto (cffi)
releases the GIL. The loops read forwarding state from an immutable `Snapshot` swapped by
reference (`update`), so they never lock; each loop writes only its own counters.

TCP super-frames (up to 64 KiB, from the TAP's GSO offload) travel as one datagram per TCP
segment, sent in one `sendmsg` with UDP GSO and received coalesced with UDP GRO: a lost datagram
costs only the segment it carried. Small frames are batched per next hop and flushed as soon as
the TAP has nothing more to give, so they never wait.

Where a frame or datagram goes is not decided here: :mod:`meshnet.dataplane.sleeve.forwarding`
answers with operations (send, deliver, relay, control, drop) and the loops execute them,
taking one decision per captured frame, per received datagram, or per uniform GRO run.
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
from collections.abc import Callable
from typing import Any

from meshnet.dataplane.kernel.tap import Tap
from meshnet.dataplane.kernel.udp import (
    MessageTooBig,
    UdpSendError,
    receive_run,
    send_run,
    send_segments,
)
from meshnet.dataplane.sleeve import forwarding, wire
from meshnet.dataplane.sleeve.forwarding import (
    MAX_TTL,
    Deliver,
    Drop,
    Neighbour,
    Relay,
    Send,
    Sequences,
    Snapshot,
    Target,
)
from meshnet.dataplane.sleeve.switch import Decision, Switch
from meshnet.dataplane.sleeve.vnet import (
    VNET_HEADER_SIZE,
    VnetHeader,
    icmp_too_big,
    parse_vnet,
    plan_tcp_segments,
)
from meshnet.errors import RemoteProtocolError
from meshnet.gossip.identity import format_peer_name

__all__ = ["Forwarder", "Neighbour", "Sequences", "Snapshot"]

log = logging.getLogger("meshnet.dataplane")

#: How long a receive waits while a super-frame misses segments: then what arrived is delivered.
REASSEMBLY_POLL_MS = 2
#: Seconds between sweeps of idle reassemblers (and those of origins the routes lost).
REASSEMBLY_SWEEP = 5.0


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
        self._wake_read = self._wake_write = -1  # a pipe while the threads run (see start)
        self._threads: list[threading.Thread] = []
        self._tx = _Counts()
        self._rx = _Counts()
        self._relayed = _Counts()  # written by the receive thread, like _rx
        # A random start, so a restarted sender is not mistaken for stale or duplicate data.
        self._superframe_ids = itertools.count(random.getrandbits(31))
        self._reassemblers = wire.ReassemblyTable()  # the receive thread's only
        self._next_sweep = 0.0

    def start(self) -> None:
        # stop() writes to this pipe: an idle loop blocks in poll() with no timeout (nothing
        # wakes an idle router's packet threads), and wakes for this.
        self._wake_read, self._wake_write = os.pipe()
        for name, loop in (("sleeve-tx", self._tx_loop), ("sleeve-rx", self._rx_loop)):
            thread = threading.Thread(target=self._guard, args=(loop,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._wake_write < 0:
            return  # never started
        os.write(self._wake_write, b"x")
        for thread in self._threads:
            thread.join(timeout=2)
        if not any(thread.is_alive() for thread in self._threads):
            os.close(self._wake_read)
            os.close(self._wake_write)

    def update(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot  # one reference store: the loops see old or new, never half

    def statistics(self) -> dict[str, Any]:
        snap = self._snapshot

        def rows(counts: _Counts) -> dict[str, dict[str, int]]:
            return {
                format_peer_name(peer): {"datagrams": row[0], "bytes": row[1]}
                for peer, row in list(counts.per_peer.items())
            }

        return {
            "sent": rows(self._tx),
            "received": rows(self._rx),
            "relayed": rows(self._relayed),
            "dropped": _sum_drops(self._tx, self._rx, self._relayed),
            "routes": {
                format_peer_name(dest): format_peer_name(hop)
                for dest, hop in snap.routes.unicast.items()
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
        poller.register(self._wake_read, select.POLLIN)
        batches: dict[tuple[int, int, int, int], wire.FrameBatcher] = {}
        while not self._stop.is_set():
            try:
                data = os.read(fd, 65536 + VNET_HEADER_SIZE)
            except BlockingIOError:
                self._flush(batches)
                poller.poll()
                continue
            self._from_tap(data, batches)

    def _from_tap(
        self, data: bytes, batches: dict[tuple[int, int, int, int], wire.FrameBatcher]
    ) -> None:
        snap = self._snapshot
        if len(data) < VNET_HEADER_SIZE + 14:
            self._tx.drops["runt"] += 1
            return
        destination_mac = data[VNET_HEADER_SIZE : VNET_HEADER_SIZE + 6]
        decision, owner = self._switch.from_local(
            data[VNET_HEADER_SIZE + 6 : VNET_HEADER_SIZE + 12], destination_mac, time.monotonic()
        )
        for op in forwarding.captured(snap, decision, owner, destination_mac):
            if isinstance(op, Send):
                self._send_captured(snap, data, op.targets, batches)
            elif isinstance(op, Drop):
                self._tx.drops[op.reason.value] += 1

    def _send_captured(
        self,
        snap: Snapshot,
        data: bytes,
        targets: tuple[Target, ...],
        batches: dict[tuple[int, int, int, int], wire.FrameBatcher],
    ) -> None:
        """Execute a Send: a super-frame as SEGMENTs now, a small frame into its batch."""
        frame = memoryview(data)[VNET_HEADER_SIZE:]  # a super-frame is 64 KiB: no copy
        vnet_bytes = data[:VNET_HEADER_SIZE]
        if data[1] != 0:  # gso_type: a TCP super-frame
            # Small frames queued before it go first: under load the TAP is never empty, and
            # they must neither wait for it to drain nor be overtaken (reordering hurts TCP).
            self._flush(batches)
            vnet = parse_vnet(vnet_bytes)
            superframe_id = next(self._superframe_ids)
            for target in targets:
                self._send_superframe(snap, target, superframe_id, vnet, frame)
            return
        for neighbour, destination, flags in targets:
            limit = self._frame_limit(neighbour)
            if len(frame) > limit + 14:
                self._too_big(frame, limit)
                continue
            budget = self._datagram_budget(neighbour)
            key = (neighbour.name, destination, flags, budget)  # a new path MTU: a new batcher
            batch = batches.get(key)
            if batch is None:
                batch = batches[key] = wire.FrameBatcher(budget)
            full = batch.add(vnet_bytes, frame)
            if full is not None:
                self._send_frames(snap, neighbour.name, destination, flags, full)

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
        target: Target,
        superframe_id: int,
        vnet: VnetHeader,
        frame: wire.Buffer,
    ) -> None:
        neighbour, destination, flags = target
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
        first = _originated(
            snap, wire.Kind.SEGMENT, flags, destination, neighbour.sequences.take(plan.segments)
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
        header = _originated(snap, wire.Kind.FRAMES, flags, destination, neighbour.sequences.take())
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
        poller.register(self._wake_read, select.POLLIN)
        self._sock.setblocking(False)
        while not self._stop.is_set():
            try:
                data, stride, addr = receive_run(self._sock)
            except BlockingIOError:
                if not poller.poll(REASSEMBLY_POLL_MS if self._reassemblers.pending() else None):
                    self._flush_reassembly(time.monotonic(), idle=True)
                continue
            except OSError:
                self._rx.drops["receive_error"] += 1
                continue
            self._receive(data, stride, addr)

    def _receive(self, data: memoryview, stride: int, addr: Any) -> None:
        """One receive's datagrams (GRO glues a super-frame's together)."""
        snap = self._snapshot
        if not data:
            self._rx.drops["short"] += 1
        elif snap.from_stranger(addr):
            # Before any parsing: a flood from outside costs one set lookup per receive.
            self._rx.drops[forwarding.ForwardDrop.STRANGER.value] += -(-len(data) // stride)
        else:
            now = time.monotonic()
            run = wire.DatagramRun(data, stride)
            if not self._receive_uniform(snap, run, addr, now):
                forwards: dict[int, tuple[Neighbour, list[bytes | bytearray]]] = {}
                self._receive_each(snap, run.datagrams(), addr, forwards, now)
                for neighbour, out in forwards.values():
                    self._send(neighbour, out, self._relayed)
        self._flush_reassembly(time.monotonic(), idle=False)

    def _receive_uniform(
        self, snap: Snapshot, run: wire.DatagramRun, addr: Any, now: float
    ) -> bool:
        """The bulk case as a whole: a GRO run of SEGMENTs for us from one hop, all alike but
        for their sequence and index, so one header check, one decision, one count and one
        reassembly step cover them all (sealed ones are opened in one pass). False: not that
        case, take the datagrams one by one."""
        data, stride = run
        if len(data) <= stride or data[1] != wire.Kind.SEGMENT:
            return False
        try:
            header = wire.parse_header(data)
        except wire.DatagramError:
            return False  # the one-by-one path drops and counts each
        neighbour = snap.neighbours.get(header.hop)
        if (
            neighbour is None
            or not _sent_by(neighbour, addr)
            or bool(header.flags & wire.SEALED) != (neighbour.receive_key is not None)
            or forwarding.received(snap, header) is not forwarding.DELIVER
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
        if bodies:
            self._reassemble(header.origin, bodies, now, uniform=uniform, flooded=False)
        return True

    def _receive_each(
        self,
        snap: Snapshot,
        datagrams: list[wire.Buffer],
        addr: Any,
        forwards: dict[int, tuple[Neighbour, list[bytes | bytearray]]],
        now: float,
    ) -> None:
        """The datagrams of one receive, one by one, in arrival order: checked, decided, opened
        (unless the decision is to drop), counted per hop (once per run of one hop's), then the
        decision's operations executed."""
        key_for, window_for = snap.key_for, snap.window_for
        parse, decode = wire.parse_header, wire.decode_datagram
        decide = forwarding.received
        counts = self._rx
        hop_seen = -1
        received = size = 0
        for data in datagrams:
            try:
                header = parse(data)
            except wire.DatagramError as e:
                counts.drops[e.reason.value] += 1
                continue
            hop = header.hop
            if hop != hop_seen:
                if received:
                    counts.add(hop_seen, received, size)
                    received = size = 0
                if not _sent_by(snap.neighbours.get(hop), addr):
                    counts.drops["unknown_sender"] += 1
                    hop_seen = -1
                    continue
                hop_seen = hop
            ops = decide(snap, header)
            first = ops[0] if ops else None
            if len(ops) == 1 and isinstance(first, Drop):
                # Decided on the header alone, before the costly opening: dropping is right
                # whether or not the header is authentic (a flood of made-up origins costs
                # no decryption).
                counts.drops[first.reason.value] += 1
                continue
            try:
                # Unknown senders get no key: in an encrypted mesh their datagrams cannot pass.
                header, body = decode(data, key_for, window_for, header)
            except wire.DatagramError as e:
                counts.drops[e.reason.value] += 1
                continue
            received += 1
            size += len(data)
            for op in ops:
                if isinstance(op, Deliver):
                    self._deliver(header, body, now, flooded=op.flooded)
                elif isinstance(op, Relay):
                    self._relay(snap, header, body, op.neighbour, forwards)
                elif isinstance(op, Drop):
                    counts.drops[op.reason.value] += 1
                else:
                    self._on_control(header, bytes(body), addr)
        if received:
            counts.add(hop_seen, received, size)

    def _relay(
        self,
        snap: Snapshot,
        header: wire.DatagramHeader,
        body: wire.Buffer,
        neighbour: Neighbour,
        forwards: dict[int, tuple[Neighbour, list[bytes | bytearray]]],
    ) -> None:
        """Execute a Relay: the datagram sealed anew for the next pair, sent after the run."""
        relayed = header.relayed(snap.local, neighbour.sequences.take())
        if relayed is None:  # the decision checked the TTL already; this keeps it honest
            self._rx.drops[forwarding.ForwardDrop.TTL.value] += 1
            return
        datagram = wire.encode_datagram(relayed, body, neighbour.send_key)
        queued = forwards.get(neighbour.name)
        if queued is None:
            forwards[neighbour.name] = (neighbour, [datagram])
        else:
            queued[1].append(datagram)

    def _deliver(
        self, header: wire.DatagramHeader, body: wire.Buffer, now: float, *, flooded: bool
    ) -> None:
        """Execute a Deliver: the datagram's frames into the bridge, through the switch."""
        if header.kind is wire.Kind.SEGMENT:
            self._reassemble(header.origin, [body], now, uniform=False, flooded=flooded)
            return
        try:
            frames = wire.split_frames(body)
        except wire.DatagramError as e:
            self._rx.drops[e.reason.value] += 1
            return
        self._write_frames(header.origin, frames, flooded, now)

    def _reassemble(
        self,
        origin: int,
        bodies: list[wire.Buffer],
        now: float,
        *,
        uniform: bool,
        flooded: bool,
    ) -> None:
        """The one way SEGMENT bodies reach the origin's reassembler, and what it completes the
        bridge. ``uniform``: the bodies are consecutive segments known alike (one check)."""
        reassembler = self._reassemblers.get(origin, now)
        if reassembler is None:
            self._rx.drops["reassembly_full"] += len(bodies)
            return
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
        self._reassemblers.touched(origin)
        if frames:
            self._write_frames(origin, frames, flooded, now)

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

    def _flush_reassembly(self, now: float, *, idle: bool) -> None:
        """Deliver what is left of super-frames that lost a segment: only the lost part is lost.
        Now and then, forget the reassemblers of origins gone quiet or gone from the routes."""
        table = self._reassemblers
        flushed = table.flush(now, older_than=now if idle else now - 0.005)
        if now >= self._next_sweep:
            self._next_sweep = now + REASSEMBLY_SWEEP
            flushed += table.expire(now, self._snapshot.routes.distance)
        for origin, frames in flushed:
            self._write_frames(origin, frames, False, now)


def _sent_by(neighbour: Neighbour | None, addr: Any) -> bool:
    """Whether a datagram from UDP source ``addr`` may be ``neighbour``'s (claimed as its hop):
    its address; and without a password (nothing else vouches for it), its port too."""
    if neighbour is None or neighbour.address[0] != addr[0]:
        return False
    return neighbour.receive_key is not None or neighbour.address[1] == addr[1]


def _originated(
    snap: Snapshot, kind: wire.Kind, flags: int, destination: int, sequence: int
) -> wire.DatagramHeader:
    """The header of a datagram we send first: we are its origin and its hop, its TTL full."""
    return wire.DatagramHeader(
        kind=kind,
        flags=flags,
        ttl=MAX_TTL,
        origin=snap.local,
        destination=destination,
        hop=snap.local,
        sequence=sequence,
    )


def _sum_drops(*threads: _Counts) -> dict[str, int]:
    """Drops by reason over the threads' counters, read from another thread.

    Each Counter is copied in one step that runs no Python code (``dict(counter)``), so its
    thread cannot add a key mid-copy. Adding the live Counters (``a + b``) iterates them in
    Python: a packet thread counting a reason for the first time meanwhile made that raise
    "dictionary changed size during iteration", and the status API answer an error.
    """
    total: collections.Counter[str] = collections.Counter()
    for counts in threads:
        total.update(dict(counts.drops))
    return {reason: n for reason, n in total.items() if n > 0}
