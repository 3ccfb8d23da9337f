"""The packet loop: TAP -> UDP and UDP -> TAP, both in one OS thread.

Measured here, an OS thread moves about twice what trio tasks do; one thread for both directions
moved a third more than one per direction, which handed the GIL over at every system call. The
loop reads forwarding state from an immutable `Snapshot` swapped by reference (`update`), so it
never locks.

TCP super-frames (up to 64 KiB, from the TAP's GSO offload) travel as one datagram per TCP
segment, sent in one `sendmsg` with UDP GSO and received coalesced with UDP GRO: a lost datagram
costs only the segment it carried. The bulk case is a fast path (:mod:`superframes`): the kernel
gathers each GSO send from the TAP read buffer, and a whole GRO run goes back to the TAP in one
`writev`, so the kernel's copies are the only ones. Everything unusual (relays, floods, lost
segments, control) takes the general path, one datagram at a time. Small frames are batched per
next hop and flushed as soon as the TAP has nothing more to give, so they never wait. Small frames
that are not TCP arrive on the TAP's express queue and leave marked for the peer's express
socket (:mod:`meshnet.dataplane.kernel.lanes`); both express lanes are served first each round.

Where a frame or datagram goes is not decided here: :mod:`meshnet.dataplane.sleeve.forwarding`
answers with operations (send, deliver, relay, control, drop) and the loops execute them,
taking one decision per captured frame, per received datagram, or per uniform GRO run.
"""

from __future__ import annotations

import collections
import importlib
import itertools
import logging
import os
import random
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meshnet.constants import FASTDP_PROBE_ETHERTYPE, FASTDP_PROBE_MAGIC
from meshnet.dataplane.kernel.lanes import EXPRESS_DATAGRAM
from meshnet.dataplane.kernel.tap import READ_SIZE as TAP_READ_SIZE
from meshnet.dataplane.kernel.tap import Tap, TapError
from meshnet.dataplane.kernel.udp import (
    RECEIVE_SIZE,
    MessageTooBig,
    UdpSendError,
    receive_into,
    send_gathered,
    send_one,
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
from meshnet.dataplane.sleeve.seal import InPlaceOpener
from meshnet.dataplane.sleeve.switch import Decision, Switch
from meshnet.dataplane.sleeve.vnet import (
    VNET_HEADER_SIZE,
    VNET_NONE,
    icmp_too_big,
    parse_vnet,
    plan_gso,
)
from meshnet.errors import RemoteProtocolError
from meshnet.gossip.identity import format_peer_name

if TYPE_CHECKING:
    from meshnet.dataplane.sleeve.superframes import RunReader, SuperframeSender

__all__ = ["Forwarder", "Neighbour", "Sequences", "Snapshot"]

log = logging.getLogger("meshnet.dataplane")

#: How long a receive waits while a super-frame misses segments: then what arrived is delivered.
REASSEMBLY_POLL_MS = 2
#: Seconds between sweeps of idle reassemblers (and those of origins the routes lost).
REASSEMBLY_SWEEP = 5.0
#: Reads from one side before the other gets its turn. Measured (iperf3, two-host lab): a turn
#: of 1 moved a quarter less than 16, as did serving the TAP after every super-frame written to
#: it. The waiting side holds the TCP stream's ACKs, and a sender's BBR keeps in flight, queued
#: before the slower router, what ACKs arriving in bursts suggest. 2026-12-07, `ping_probe.py`,
#: mean of 3-10 runs: 8 against 16 moved 7.28 against 7.27 Gbit/s plain (ping under load 1.94
#: against 2.09 ms) and 5.31 against 5.44 sealed (2.37 against 2.59 ms); 4, or turns of 300 us,
#: moved 5-10% less for no surer gain.
TURN = 8
_SEQUENCE = struct.Struct(">Q")
_SEGMENT, _FRAMES = int(wire.Kind.SEGMENT), int(wire.Kind.FRAMES)  # plain ints compare faster
_BULK_PATH = "meshnet.dataplane.sleeve.superframes"
_PROBE_PREFIX = FASTDP_PROBE_ETHERTYPE.to_bytes(2, "big") + FASTDP_PROBE_MAGIC


def _carries_tcp(frame: wire.Buffer) -> bool:
    """Whether an Ethernet frame holds TCP (IPv4 or IPv6 without extension headers): the start
    of traffic that may turn bulk. ARP, Neighbor Discovery, DHCP or a ping do not."""
    if len(frame) < 54:
        return False
    if frame[12] == 0x08 and frame[13] == 0x00:
        return frame[23] == 6
    return frame[12] == 0x86 and frame[13] == 0xDD and frame[20] == 6


class _Counts:
    """One direction's counters: per peer [datagrams, bytes], and drops by reason; super-frames
    that went whole in one GSO send or came whole in one GRO run (the bulk path); datagrams
    sent or received in the express lane."""

    def __init__(self) -> None:
        self.per_peer: collections.defaultdict[int, list[int]] = collections.defaultdict(
            lambda: [0, 0]
        )
        self.drops: collections.Counter[str] = collections.Counter()
        self.superframes = 0
        self.express = 0  # datagrams that took the express lane

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
        express_tap: Tap | None = None,
        express_sock: socket.socket | None = None,
    ) -> None:
        self._tap = tap
        self._sock = sock
        # The express lanes (see meshnet.dataplane.kernel.lanes): the kernel puts small frames
        # and datagrams there, and each turn serves them first.
        self._express_tap = express_tap
        self._express_sock = express_sock
        self._switch = switch
        self._snapshot = snapshot
        self._on_control = on_control
        self._on_too_big = on_too_big
        self._stop = threading.Event()
        self._wake_read = self._wake_write = -1  # a pipe while the thread runs (see start)
        self._thread: threading.Thread | None = None
        self._tx = _Counts()
        self._rx = _Counts()
        self._relayed = _Counts()
        # A random start, so a restarted sender is not mistaken for stale or duplicate data.
        self._superframe_ids = itertools.count(random.getrandbits(31))
        self._reassemblers = wire.ReassemblyTable()
        self._next_sweep = 0.0
        # The packet thread's buffers, reused for every frame and datagram.
        self._tap_buffer = bytearray(TAP_READ_SIZE)
        self._tap_view = memoryview(self._tap_buffer)
        self._superframes: SuperframeSender | None = None  # made on first use: see _bulk_sender
        self._batches: dict[tuple[int, int, int, int, bool], wire.FrameBatcher] = {}
        self._batched = False  # whether a frame went into a batch since the last flush
        self._relay_express = False  # whether the datagrams being received came express
        self._udp_buffer = bytearray(RECEIVE_SIZE)
        self._udp_view = memoryview(self._udp_buffer)
        self._opener = InPlaceOpener(self._udp_buffer, wire.HEADER_SIZE)
        self._runs: RunReader | None = None  # made on first use: see _bulk_reader
        self._bulk_loading: threading.Thread | None = None  # see _load_bulk_path
        # Until the bulk path is imported, super-frames take the general path.
        self._bulk_ready = _BULK_PATH in sys.modules

    def _load_bulk_path(self) -> None:
        """Import the bulk path (numpy) in the background once TCP crosses the sleeve.

        Imported by the packet thread at the first super-frame, it stalled that thread ~150 ms
        under load (measured: the pings sent as an iperf3 run began took 147, 92 and 36 ms,
        which alone raised a 5 s run's average ping by ~2.5 ms). A TCP handshake comes before
        its bulk, but not always by the import's 40 ms: until it is done, super-frames take the
        general path, so the packet thread never waits on the import's lock. An idle router,
        whose sleeve carries only ARP, Neighbor Discovery and the odd ping, never loads numpy
        (6 MiB of its RSS when every small frame loaded it).
        """
        thread = threading.Thread(target=self._import_bulk_path, name="sleeve-bulk", daemon=True)
        self._bulk_loading = thread
        thread.start()

    def _import_bulk_path(self) -> None:
        try:
            importlib.import_module(_BULK_PATH)
        except Exception:
            log.exception("sleeve bulk path unavailable: super-frames take the general path")
            return
        self._bulk_ready = True

    def _bulk_sender(self) -> SuperframeSender:
        if self._superframes is None:
            # The bulk path needs numpy (~11 MiB of memory): a router pays for it once a
            # super-frame crosses its sleeve, not for being idle or on fastdp.
            from meshnet.dataplane.sleeve.superframes import SuperframeSender

            self._superframes = SuperframeSender(self._tap_buffer)
        return self._superframes

    def _bulk_reader(self) -> RunReader:
        if self._runs is None:
            # numpy on first use, as in _bulk_sender.
            from meshnet.dataplane.sleeve.superframes import RunReader

            self._runs = RunReader(self._udp_buffer)
        return self._runs

    def start(self) -> None:
        # stop() writes to this pipe: an idle loop blocks in poll() with no timeout (nothing
        # wakes an idle router's packet thread), and wakes for this.
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(
            target=self._guard, args=(self._loop,), name="sleeve", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is None:
            return  # never started
        os.write(self._wake_write, b"x")
        self._thread.join(timeout=2)
        if not self._thread.is_alive():
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
            "superframes": {"sent": self._tx.superframes, "received": self._rx.superframes},
            "routes": {
                format_peer_name(dest): format_peer_name(hop)
                for dest, hop in snap.routes.unicast.items()
            },
            "neighbours": len(snap.neighbours),
            "express_lanes": {
                "tap": self._express_tap is not None,
                "udp": self._express_sock is not None,
                "sent": self._tx.express + self._relayed.express,
                "received": self._rx.express,
            },
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

    def _loop(self) -> None:
        """Both directions in one thread: with two, every system call handed the GIL over and
        back (two context switches each), which measured a third slower. Each ready side is
        read until it is empty or has had its turn, so neither starves the other; the express
        lanes go first, so a ping waits for at most one bulk turn, not for the bulk queued
        before it."""
        lanes = [
            lane
            for lane in (self._express_tap, self._express_sock, self._tap, self._sock)
            if lane is not None
        ]
        socks = {lane.fileno(): lane for lane in lanes if isinstance(lane, socket.socket)}
        # Served in this order whenever ready: express TAP, express socket, TAP, socket.
        order = {lane.fileno(): i for i, lane in enumerate(lanes)}

        def first(event: tuple[int, int]) -> int:
            return order.get(event[0], len(order))

        poller = select.poll()
        for lane in lanes:
            os.set_blocking(lane.fileno(), False)
            poller.register(lane.fileno(), select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        express_tap = self._express_tap.fileno() if self._express_tap is not None else -1

        while not self._stop.is_set():
            pending = self._reassemblers.pending()
            ready = poller.poll(REASSEMBLY_POLL_MS if pending else None)
            if not ready:
                self._flush_reassembly(time.monotonic(), idle=True)
            if len(ready) > 1:
                ready.sort(key=first)
            for fd, _ in ready:
                udp = socks.get(fd)
                if udp is not None:
                    self._read_udp(udp, express=udp is self._express_sock)
                elif fd != self._wake_read:
                    self._read_tap(fd, express=fd == express_tap)

    def _read_tap(self, fd: int, express: bool) -> None:
        """Up to a turn's worth of frames from a TAP queue; small ones batched meanwhile, and
        sent once it is empty (or the turn ends), so none waits for company."""
        buffers = [self._tap_buffer]
        readv = os.readv
        for _ in range(TURN):
            try:
                size = readv(fd, buffers)
            except BlockingIOError:
                break
            self.captured(size, express=express)
        self.flush()

    def _read_udp(self, sock: socket.socket, *, express: bool) -> None:
        """Up to a turn's worth of receives from a UDP socket (the express lane's, or not)."""
        buffer = self._udp_buffer
        for _ in range(TURN):
            try:
                nbytes, stride, addr = receive_into(sock, buffer)
            except BlockingIOError:
                return
            except OSError:
                self._rx.drops["receive_error"] += 1
                return
            if express:
                self._rx.express += -(-nbytes // stride)
            self._relay_express = express  # what it relays keeps to the lane it came by
            self.received(nbytes, stride, addr)

    def captured(self, size: int, *, express: bool = False) -> None:
        """The frame of ``size`` bytes (virtio-net header included) just read into the TAP
        buffer (from its express queue: small and not TCP). Small frames are batched:
        :meth:`flush` once the TAP has no more."""
        view = self._tap_view
        if size < VNET_HEADER_SIZE + 14:
            self._tx.drops["runt"] += 1
            return
        if (
            view[VNET_HEADER_SIZE + 12] == _PROBE_PREFIX[0]
            and view[VNET_HEADER_SIZE + 12 : VNET_HEADER_SIZE + 18] == _PROBE_PREFIX
        ):
            # A fastdp probe flooded to us before its MAC was pinned on the VXLAN port: carried
            # here, its answer would prove a VXLAN path that may not work (through a NAT).
            self._tx.drops["fastdp_probe"] += 1
            return
        snap = self._snapshot
        destination_mac = bytes(view[VNET_HEADER_SIZE : VNET_HEADER_SIZE + 6])
        decision, owner = self._switch.from_local(
            bytes(view[VNET_HEADER_SIZE + 6 : VNET_HEADER_SIZE + 12]),
            destination_mac,
            time.monotonic(),
        )
        for op in forwarding.captured(snap, decision, owner, destination_mac):
            if isinstance(op, Send):
                if view[1] != 0:  # gso_type: a TCP super-frame
                    # Small frames queued before it go first: they must neither wait nor be
                    # overtaken (reordering hurts TCP).
                    self.flush()
                    self._send_superframe(snap, size, op.targets)
                else:
                    self._send_small(snap, size, op.targets, express)
            elif isinstance(op, Drop):
                self._tx.drops[op.reason.value] += 1

    def _send_small(
        self, snap: Snapshot, size: int, targets: tuple[Target, ...], express: bool
    ) -> None:
        """Execute a Send of a small frame: into its target's batch (copied: the TAP buffer is
        reused), sent when full or flushed. Express frames have batches of their own, no larger
        than the receiver's express lane takes."""
        view = self._tap_view
        if self._bulk_loading is None and _carries_tcp(view[VNET_HEADER_SIZE:size]):
            self._load_bulk_path()
        for neighbour, destination, flags in targets:
            budget = self._datagram_budget(neighbour)
            # The largest IP packet (frame less its Ethernet header) one datagram carries here.
            limit = min(budget - wire.FRAME_OVERHEAD - 14, snap.overlay_mtu)
            if size - VNET_HEADER_SIZE > limit + 14:
                self._too_big(view[VNET_HEADER_SIZE:size], limit)
                continue
            entry = size - VNET_HEADER_SIZE + wire.FRAME_OVERHEAD
            lane = express and entry <= self._express_budget(neighbour)
            if lane:  # (the TAP steers no frame too large for it there; this makes sure)
                budget = min(budget, self._express_budget(neighbour))
            # A new path MTU: a new batcher.
            key = (neighbour.name, destination, flags, budget, lane)
            batch = self._batches.get(key)
            if batch is None:
                batch = self._batches[key] = wire.FrameBatcher(budget)
            full = batch.add(view[:size])
            self._batched = True
            if full is not None:
                self._send_frames(snap, neighbour.name, destination, flags, full, lane)

    def flush(self) -> None:
        """Send every batch of small frames."""
        if not self._batched:
            return
        self._batched = False
        snap = self._snapshot
        for (hop, destination, flags, _, express), batch in self._batches.items():
            body = batch.take()
            if body:
                self._send_frames(snap, hop, destination, flags, body, express)

    @staticmethod
    def _express_budget(neighbour: Neighbour) -> int:
        """Body bytes of an express datagram: the receiver's express lane takes no larger."""
        return EXPRESS_DATAGRAM - wire.HEADER_SIZE - (wire.TAG_SIZE if neighbour.send_key else 0)

    def _datagram_budget(self, neighbour: Neighbour) -> int:
        """Body bytes that fit one datagram on this path."""
        mtu = neighbour.max_datagram or (
            self._snapshot.overlay_mtu + wire.ENCAPSULATION_OVERHEAD - wire.UNDERLAY_HEADERS
        )
        return mtu - wire.HEADER_SIZE - (wire.TAG_SIZE if neighbour.send_key else 0)

    def _too_big(self, frame: wire.Buffer, mtu: int) -> None:
        """Answer like a router would, so the sender's path-MTU discovery shrinks its packets."""
        self._tx.drops["too_big"] += 1
        reply = icmp_too_big(frame, mtu)
        if reply is not None:
            self._write_tap([VNET_NONE, reply], self._tx)

    def _send_superframe(self, snap: Snapshot, size: int, targets: tuple[Target, ...]) -> None:
        """Execute a Send of the TCP super-frame in the TAP buffer: its SEGMENT datagrams, as
        few GSO sends as the kernel takes, to each target."""
        view = self._tap_view
        frame = view[VNET_HEADER_SIZE:size]
        try:
            # gso_type and gso_size (little-endian) from the virtio-net header.
            plan = plan_gso(view[1], view[4] | view[5] << 8, frame)
        except RemoteProtocolError:
            self._tx.drops["unsupported_superframe"] += 1  # e.g. VLAN-tagged: not carried
            return
        superframe_id = next(self._superframe_ids)
        bulk = self._bulk_ready
        if not bulk and self._bulk_loading is None:
            self._load_bulk_path()
        for neighbour, destination, flags in targets:
            budget = self._datagram_budget(neighbour)
            segment_body = wire.SEGMENT_OVERHEAD + plan.header_len + plan.gso_size
            if segment_body > budget:
                # The segments' size comes from the sender's MSS: tell it the MTU that fits.
                overhead = segment_body - self._snapshot.overlay_mtu
                self._too_big(frame, max(576, budget - overhead))
                return
            key = neighbour.send_key
            sequence = neighbour.sequences.take(plan.segments)
            if not bulk:
                header = _originated(snap, wire.Kind.SEGMENT, flags, destination, sequence)
                bodies = wire.segment_bodies(superframe_id, parse_vnet(view), bytes(frame))
                self._send(neighbour, wire.encode_datagrams(header, bodies, key), self._tx)
                continue
            head = snap.head_for(wire.Kind.SEGMENT, destination, flags, key is not None)
            try:
                layout = (self._superframes or self._bulk_sender()).layout(
                    plan, size - VNET_HEADER_SIZE, head, sequence, superframe_id, key
                )
            except ValueError:
                self._tx.drops["unsupported_superframe"] += 1
                return
            try:
                for buffers, nbytes in layout.sends:
                    send_gathered(self._sock, buffers, layout.stride, nbytes, neighbour.address)
            except UdpSendError as e:
                self._send_failed(neighbour, e, self._tx)
                continue
            self._tx.add(neighbour.name, layout.datagrams, layout.size)
            self._tx.superframes += 1

    def _send_frames(
        self, snap: Snapshot, hop: int, destination: int, flags: int, body: bytes, express: bool
    ) -> None:
        neighbour = snap.neighbours.get(hop)
        if neighbour is None:
            self._tx.drops["no_path"] += 1
            return
        key = neighbour.send_key
        head = snap.head_for(wire.Kind.FRAMES, destination, flags, key is not None)
        datagram = wire.encode_with_head(head, neighbour.sequences.take(), body, key)
        self._send(neighbour, [datagram], self._tx, express=express)

    def _send(
        self,
        neighbour: Neighbour,
        datagrams: list[bytes | bytearray],
        counts: _Counts,
        *,
        express: bool = False,
    ) -> None:
        sock = self._express_sock if express and self._express_sock else self._sock
        try:
            if len(datagrams) == 1:
                send_one(sock, datagrams[0], neighbour.address)  # a batch of small frames
            else:
                send_segments(sock, datagrams, neighbour.address)
        except UdpSendError as e:
            self._send_failed(neighbour, e, counts)
            return
        counts.add(neighbour.name, len(datagrams), sum(len(d) for d in datagrams))
        if sock is not self._sock:
            counts.express += len(datagrams)

    def _send_failed(self, neighbour: Neighbour, error: UdpSendError, counts: _Counts) -> None:
        if isinstance(error, MessageTooBig):
            counts.drops["send_too_big"] += 1
            self._on_too_big(neighbour.name, error.size)  # the path shrank: search again
        else:
            counts.drops[f"send_{error.reason}"] += 1

    # --- UDP -> TAP ----------------------------------------------------------------------------

    def received(self, nbytes: int, stride: int, addr: Any) -> None:
        """The datagrams of one receive, ``nbytes`` in the UDP buffer (GRO glues a
        super-frame's together, ``stride`` bytes each)."""
        snap = self._snapshot
        view = self._udp_view
        if not nbytes:
            self._rx.drops["short"] += 1
        elif snap.from_stranger(addr):
            # Before any parsing: a flood from outside costs one set lookup per receive.
            self._rx.drops[forwarding.ForwardDrop.STRANGER.value] += -(-nbytes // stride)
        else:
            now = time.monotonic()
            arrival = None
            if nbytes >= wire.HEADER_SIZE and view[3]:  # a TTL of 0 is parse_header's to drop
                head = bytearray(view[:24])
                head[3] = 0
                arrival = snap.arrival(bytes(head))
            if arrival is None or not forwarding.sent_by(arrival[0], addr):
                self._receive_each(snap, view[:nbytes], stride, addr, now)
            elif view[1] == _SEGMENT and nbytes > stride and self._bulk_ready:
                self._receive_run(snap, arrival, nbytes, stride, addr, now)
            elif view[1] == _FRAMES:
                self._receive_frames(arrival, nbytes, stride, addr, now)
            else:
                self._receive_each(snap, view[:nbytes], stride, addr, now)
        if self._reassemblers.pending() or time.monotonic() >= self._next_sweep:
            self._flush_reassembly(time.monotonic(), idle=False)

    def _receive_run(
        self,
        snap: Snapshot,
        arrival: tuple[Neighbour, int],
        nbytes: int,
        stride: int,
        addr: Any,
        now: float,
    ) -> None:
        """The bulk case: a GRO run of SEGMENTs for us, checked by its first and last datagram
        (and each one's tag when sealed); a whole super-frame goes to the TAP in one writev."""
        neighbour, origin = arrival
        check = self._bulk_reader().read(nbytes, stride, neighbour.receive_key, neighbour.window)
        run = check.run
        if run is None and not check.opened:
            self._receive_each(snap, self._udp_view[:nbytes], stride, addr, now)
            return
        drops = self._rx.drops
        if check.rejected:
            drops[wire.DatagramDrop.BAD_TAG.value] += check.rejected
        if check.replayed:
            drops[wire.DatagramDrop.REPLAYED.value] += check.replayed
        self._rx.add(neighbour.name, run.segments if run else len(check.bodies), nbytes)
        if run is None:
            # Opened, but not one super-frame's run in order: the reassembler takes each body
            # (copied: the buffer is reused).
            self._reassemble(origin, [bytes(b) for b in check.bodies], now, uniform=False)
            return
        if run.first_index or run.segments != run.total:
            bodies = self._bulk_reader().bodies()
            self._reassemble(origin, [bytes(b) for b in bodies], now, uniform=True)
            return
        earlier = self._reassemblers.complete(origin, run.superframe, now)
        if earlier is None:
            drops["late"] += run.segments
            return
        if earlier:
            self._write_frames(origin, earlier, False, now)
        headers = run.headers
        decision, _ = self._switch.from_peer(
            origin, bytes(headers[6:12]), bytes(headers[0:6]), now, False
        )
        if decision is Decision.DELIVER or decision is Decision.FLOOD:
            self._write_tap(run.parts, self._rx)
            self._rx.superframes += 1
        else:
            drops["switch"] += 1

    def _receive_frames(
        self, arrival: tuple[Neighbour, int], nbytes: int, stride: int, addr: Any, now: float
    ) -> None:
        """FRAMES datagrams for us (a GRO run of equal-sized ones, or one): each checked by its
        head (and its tag and sequence when sealed), its frames to the TAP."""
        neighbour, origin = arrival
        view = self._udp_view
        key, window = neighbour.receive_key, neighbour.window
        tag = wire.TAG_SIZE if key is not None else 0
        head = bytes(view[:24])
        drops = self._rx.drops
        received = 0
        for at in range(0, nbytes, stride):
            end = min(at + stride, nbytes)
            if end - at < wire.HEADER_SIZE + tag + 2 or (at and bytes(view[at : at + 24]) != head):
                self._receive_each(self._snapshot, view[at:end], end - at, addr, now)
                continue
            if key is not None:
                sequence = _SEQUENCE.unpack_from(view, at + 24)[0]
                if not window.would_accept(sequence):
                    drops[wire.DatagramDrop.REPLAYED.value] += 1
                    continue
                if not self._opener.open(at, end - at, sequence, key):
                    drops[wire.DatagramDrop.BAD_TAG.value] += 1
                    continue
                window.check_and_update(sequence)
            received += 1
            body = view[at + wire.HEADER_SIZE : end - tag]
            if (body[0] << 8 | body[1]) == len(body) - wire.FRAME_OVERHEAD:
                # One frame, the usual case (an ACK): its header and frame are one piece.
                self._write_frames(origin, [(body[2:12], body[12:])], False, now)
                continue
            try:
                frames = wire.split_frames(body)
            except wire.DatagramError as e:
                drops[e.reason.value] += 1
                continue
            self._write_frames(origin, frames, False, now)
        if received:
            self._rx.add(neighbour.name, received, nbytes)

    def _receive_each(
        self, snap: Snapshot, data: memoryview, stride: int, addr: Any, now: float
    ) -> None:
        """The datagrams of one receive, one by one, in arrival order: checked, decided, opened
        (unless the decision is to drop), counted per hop (once per run of one hop's), then the
        decision's operations executed. What is kept past this call is copied (the buffer is
        reused for the next receive)."""
        key_for, window_for = snap.key_for, snap.window_for
        parse, decode = wire.parse_header, wire.decode_datagram
        decide = forwarding.received
        counts = self._rx
        hop_seen = -1
        received = size = 0
        forwards: dict[int, tuple[Neighbour, list[bytes | bytearray]]] = {}
        for at in range(0, len(data), stride):
            datagram = data[at : at + stride]
            try:
                header = parse(datagram)
            except wire.DatagramError as e:
                counts.drops[e.reason.value] += 1
                continue
            hop = header.hop
            if hop != hop_seen:
                if received:
                    counts.add(hop_seen, received, size)
                    received = size = 0
                neighbour = snap.neighbours.get(hop)
                if not forwarding.sent_by(neighbour, addr):
                    hop_seen = -1
                    if forwarding.may_move_path(neighbour, header, addr):
                        self._moved_heartbeat(datagram, header, addr, snap)
                    else:
                        counts.drops["unknown_sender"] += 1
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
                header, body = decode(datagram, key_for, window_for, header)
            except wire.DatagramError as e:
                counts.drops[e.reason.value] += 1
                continue
            received += 1
            size += len(datagram)
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
        for neighbour, out in forwards.values():
            self._send(neighbour, out, self._relayed, express=self._relay_express)

    def _moved_heartbeat(
        self, datagram: memoryview, header: wire.DatagramHeader, addr: Any, snap: Snapshot
    ) -> None:
        """A heartbeat from a neighbour's host at another port: opened (without a password,
        checked) like any, and handed to the control plane, which moves the path."""
        try:
            header, body = wire.decode_datagram(datagram, snap.key_for, snap.window_for, header)
        except wire.DatagramError as e:
            self._rx.drops[e.reason.value] += 1
            return
        self._on_control(header, bytes(body), addr)

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
            self._reassemble(header.origin, [bytes(body)], now, uniform=False, flooded=flooded)
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
        flooded: bool = False,
    ) -> None:
        """The one way SEGMENT bodies reach the origin's reassembler, and what it completes the
        bridge. ``uniform``: the bodies are consecutive segments known alike (one check). The
        reassembler keeps what it is given: never a view of a reused buffer."""
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
        if self._bulk_loading is None and any(_carries_tcp(frame) for _, frame in frames):
            self._load_bulk_path()
        for vnet, frame in frames:
            if len(frame) < 14:
                self._rx.drops["runt"] += 1
                continue
            src, dst = bytes(frame[6:12]), bytes(frame[0:6])  # views would pin the buffer
            decision, _ = self._switch.from_peer(origin, src, dst, now, flooded)
            if decision is Decision.DELIVER or decision is Decision.FLOOD:
                self._write_tap([vnet, frame], self._rx)
            else:
                self._rx.drops["switch"] += 1

    def _write_tap(self, parts: list[wire.Buffer], counts: _Counts) -> None:
        """A frame into our bridge; one the kernel refuses (a peer's malformed virtio-net
        header, say) is counted and dropped."""
        try:
            self._tap.write_parts(parts)
        except TapError:
            counts.drops["tap_refused"] += 1

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


def _sum_drops(*directions: _Counts) -> dict[str, int]:
    """Drops by reason over the directions' counters, read from another thread.

    Each Counter is copied in one step that runs no Python code (``dict(counter)``), so the
    packet thread cannot add a key mid-copy. Adding the live Counters (``a + b``) iterates them
    in Python: the packet thread counting a reason for the first time meanwhile made that raise
    "dictionary changed size during iteration", and the status API answer an error.
    """
    total: collections.Counter[str] = collections.Counter()
    for counts in directions:
        total.update(dict(counts.drops))
    return {reason: n for reason, n in total.items() if n > 0}
