"""The least a Python TAP-to-UDP forwarder can do: what the sleeve's speed could be here.

`bench/throughput.py --only minimal` runs one in each host of the sleeve's kernel topology
(container veth at MTU 1354, bridge, TAP with virtio-net headers and TSO offloads, UDP over a
veth underlay) and measures it beside the sleeve in the same run. It keeps only the kernel
work both share: a super-frame read from the TAP leaves in UDP GSO sends of 1400-byte
datagrams, and what arrives (GRO runs) goes back to the TAP one frame per writev. No header
but a 4-byte length before each frame, which the receiver reads as a stream: nothing survives
a lost or reordered datagram (a veth underlay loses none), no switch, routes, relays, replay
window or counters, no sealing. Two threads with blocking reads, or (``--one-loop``) one
thread polling both sides in turns of 8 reads, as the sleeve does.

    python bench/minimal_forwarder.py TAP LOCAL_IP PEER_IP [--one-loop]   (in a host's netns)
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import socket
import struct
import threading

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
OFFLOADS = 0x01 | 0x02 | 0x04 | 0x08  # CSUM, TSO4, TSO6, TSO_ECN
SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104
PORT = 7000
DATAGRAM = 1400
PER_SEND = 46  # datagrams of DATAGRAM bytes within one GSO send's 65507
TURN = 8
FRAME_MAX = 65550  # a TAP read: virtio-net header, Ethernet with a VLAN tag, 64 KiB
_LENGTH = struct.Struct(">I")


class Forwarder:
    def __init__(self, tap_name: str, local: str, peer: str) -> None:
        self.tap = os.open("/dev/net/tun", os.O_RDWR)
        flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
        fcntl.ioctl(self.tap, TUNSETIFF, struct.pack("16sH", tap_name.encode(), flags))
        fcntl.ioctl(self.tap, TUNSETOFFLOAD, OFFLOADS)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, 32, 4 << 20)  # SO_SNDBUFFORCE, as the sleeve
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE
        self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        self.sock.bind((local, PORT))
        self.peer = (peer, PORT)
        self.cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("@H", DATAGRAM))]
        self.out = bytearray(70000)
        self.out_view = memoryview(self.out)
        self.arena = bytearray(1 << 20)
        self.arena_view = memoryview(self.arena)
        self.held = 0  # bytes of a frame not yet whole at the arena's start

    def send_one(self) -> None:
        """One frame from the TAP to the peer, behind its length."""
        view = self.out_view
        size = os.readv(self.tap, [view[4:]])
        _LENGTH.pack_into(self.out, 0, size)
        total, at = size + 4, 0
        while at < total:
            end = min(total, at + DATAGRAM * PER_SEND)
            if end - at > DATAGRAM:
                self.sock.sendmsg([view[at:end]], self.cmsg, 0, self.peer)
            else:
                self.sock.sendto(view[at:end], self.peer)
            at = end

    def receive_one(self) -> None:
        """One receive (a GRO run, or one datagram); every frame it completes to the TAP."""
        arena, view = self.arena, self.arena_view
        held = self.held
        held += self.sock.recv_into(view[held : held + 70000])
        at = 0
        while held - at >= 4:
            size = _LENGTH.unpack_from(arena, at)[0]
            if size > FRAME_MAX:  # the stream broke (a lost datagram): start over
                self.held = 0
                return
            if held - at - 4 < size:
                break
            os.writev(self.tap, [view[at + 4 : at + 4 + size]])
            at += 4 + size
        if at:
            arena[: held - at] = arena[at:held]
        self.held = held - at

    def run_threads(self) -> None:
        def sending() -> None:
            while True:
                self.send_one()

        threading.Thread(target=sending, daemon=True).start()
        while True:
            self.receive_one()

    def run_one_loop(self) -> None:
        os.set_blocking(self.tap, False)
        self.sock.setblocking(False)
        poller = select.poll()
        for fd in (self.tap, self.sock.fileno()):
            poller.register(fd, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                step = self.send_one if fd == self.tap else self.receive_one
                try:
                    for _ in range(TURN):
                        step()
                except BlockingIOError:
                    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tap")
    parser.add_argument("local")
    parser.add_argument("peer")
    parser.add_argument("--one-loop", action="store_true")
    args = parser.parse_args()
    forwarder = Forwarder(args.tap, args.local, args.peer)
    print("ready", flush=True)
    if args.one_loop:
        forwarder.run_one_loop()
    else:
        forwarder.run_threads()


if __name__ == "__main__":
    main()
