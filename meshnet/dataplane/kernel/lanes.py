"""An express lane for small packets past the bulk queues: kernel programs that pick a queue.

Under a TCP bulk transfer, a ping waited ~0.5 ms in the sleeve TAP's queue behind the sender's
super-frames and ~0.7 ms in the receiving router's UDP socket behind their datagrams (measured
with tcpdump at both, 2026-12-07). A second queue on each, chosen by the kernel, lets the packet
loop serve small packets (pings, ARP, Neighbor Discovery, DNS, small UDP) first:

- the TAP gets a second queue (IFF_MULTI_QUEUE) and a steering program (TUNSETSTEERINGEBPF: an
  eBPF socket filter whose return value picks the queue) that sends frames of up to
  :data:`EXPRESS_FRAME` bytes that are not TCP to queue 1;
- the sender sends what it read there from a second socket on the same port (SO_REUSEPORT),
  whose datagrams carry DSCP EF ("expedited forwarding", RFC 3246) in their IP header; the
  receiver's classic BPF program on the port's reuseport group (SO_ATTACH_REUSEPORT_CBPF) hands
  EF datagrams of up to :data:`EXPRESS_DATAGRAM` bytes to its second socket. The mark is outside
  the seal, so it works sealed too; a peer that does not mark, or a network that clears the
  mark, just leaves everything in the bulk lane.

TCP stays in the bulk lane whatever its size: a small segment must not overtake the super-frames
of its own flow queued before it (TCP counts reordering as loss). What the lane does overtake is
why the replay window spans a full socket buffer (:mod:`meshnet.dataplane.sleeve.replay`). Both
programs only pick a queue, never drop; a kernel, container or seccomp policy that refuses them
leaves one lane (:class:`LanesUnavailable`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct

from meshnet.errors import MeshnetError

EXPRESS_FRAME = 256
"""Frames of up to this many bytes that are not TCP take the TAP's express queue (a ping is 98)."""
EXPRESS_DATAGRAM = 512
"""The largest datagram (UDP payload) the receiver takes in its express lane: the sender caps
its express batches to this."""
EXPRESS_TOS = 0xB8
"""DSCP EF in the IPv4 TOS or IPv6 traffic class byte of an express datagram."""

SO_ATTACH_REUSEPORT_CBPF = 51
TUNSETSTEERINGEBPF = 0x800454E0
_SKF_NET_OFF = 0xFFF00000  # -0x100000: classic BPF loads relative to the network header
_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_SOCKET_FILTER = 1
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_ATTR_SIZE = 128


class LanesUnavailable(MeshnetError):
    """The kernel would not take a lane program: the packet loop keeps one lane."""


def _cbpf(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def _ebpf(code: int, dst: int, src: int, off: int, imm: int) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


#: Classic BPF on a reuseport group: 1 (express) for an EF-marked datagram of up to
#: EXPRESS_DATAGRAM payload bytes, else 0 (bulk). Jumps count the instructions they skip.
REUSEPORT_PROGRAM = b"".join(
    (
        _cbpf(0x80, 0, 0, 0),  # 0  A = payload length
        _cbpf(0x25, 12, 0, EXPRESS_DATAGRAM),  # 1  A > max: bulk (14)
        _cbpf(0x30, 0, 0, _SKF_NET_OFF),  # 2  A = IP header byte 0
        _cbpf(0x54, 0, 0, 0xF0),  # 3  A &= version
        _cbpf(0x15, 0, 3, 0x40),  # 4  IPv4: 5, else 8
        _cbpf(0x30, 0, 0, _SKF_NET_OFF + 1),  # 5  A = TOS
        _cbpf(0x54, 0, 0, 0xFC),  # 6  A &= DSCP
        _cbpf(0x05, 0, 0, 4),  # 7  to the test (12)
        _cbpf(0x15, 0, 5, 0x60),  # 8  IPv6: 9, else bulk (14)
        _cbpf(0x28, 0, 0, _SKF_NET_OFF),  # 9  A = version, class, flow label's top
        _cbpf(0x74, 0, 0, 4),  # 10 A >>= 4: the traffic class
        _cbpf(0x54, 0, 0, 0xFC),  # 11 A &= DSCP
        _cbpf(0x15, 0, 1, EXPRESS_TOS),  # 12 EF: express (13), else bulk (14)
        _cbpf(0x06, 0, 0, 1),  # 13 express
        _cbpf(0x06, 0, 0, 0),  # 14 bulk
    )
)

#: eBPF socket filter steering a TAP's frames: 1 (express) for a frame of up to EXPRESS_FRAME
#: bytes that is not TCP (IPv6 with hop-by-hop or destination options may hide TCP: bulk),
#: else 0. Legacy LD_ABS loads read the frame (from its Ethernet header) through r6.
STEERING_PROGRAM = b"".join(
    (
        _ebpf(0xBF, 6, 1, 0, 0),  # 0  r6 = ctx
        _ebpf(0x61, 0, 1, 0, 0),  # 1  r0 = skb->len
        _ebpf(0x25, 0, 0, 13, EXPRESS_FRAME),  # 2  larger: bulk (16)
        _ebpf(0x28, 0, 0, 0, 12),  # 3  r0 = ethertype
        _ebpf(0x15, 0, 0, 2, 0x0800),  # 4  IPv4: 7
        _ebpf(0x15, 0, 0, 4, 0x86DD),  # 5  IPv6: 10
        _ebpf(0x05, 0, 0, 7, 0),  # 6  anything else (ARP...): express (14)
        _ebpf(0x30, 0, 0, 0, 23),  # 7  r0 = IPv4 protocol
        _ebpf(0x15, 0, 0, 7, 6),  # 8  TCP: bulk (16)
        _ebpf(0x05, 0, 0, 4, 0),  # 9  express (14)
        _ebpf(0x30, 0, 0, 0, 20),  # 10 r0 = IPv6 next header
        _ebpf(0x15, 0, 0, 4, 6),  # 11 TCP: bulk (16)
        _ebpf(0x15, 0, 0, 3, 0),  # 12 hop-by-hop options: bulk (16)
        _ebpf(0x15, 0, 0, 2, 60),  # 13 destination options: bulk (16)
        _ebpf(0xB7, 0, 0, 0, 1),  # 14 r0 = 1: express
        _ebpf(0x95, 0, 0, 0, 0),  # 15 exit
        _ebpf(0xB7, 0, 0, 0, 0),  # 16 r0 = 0: bulk
        _ebpf(0x95, 0, 0, 0, 0),  # 17 exit
    )
)


def mark_express(sock: socket.socket) -> None:
    """Mark every datagram ``sock`` sends as EF (IPv4 TOS, and IPv6 traffic class on an IPv6
    socket, which also sends to IPv4-mapped peers)."""
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, EXPRESS_TOS)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, EXPRESS_TOS)


def attach_reuseport_program(sock: socket.socket) -> None:
    """Attach :data:`REUSEPORT_PROGRAM` to ``sock``'s reuseport group (before or after bind):
    the group's first socket is the bulk lane, its second the express lane."""
    program = ctypes.create_string_buffer(REUSEPORT_PROGRAM, len(REUSEPORT_PROGRAM))
    fprog = struct.pack("@HP", len(REUSEPORT_PROGRAM) // 8, ctypes.addressof(program))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as e:
        raise LanesUnavailable(f"reuseport program refused: {os.strerror(e.errno or 0)}") from e


def steer_tap(fd: int) -> None:
    """Load :data:`STEERING_PROGRAM` and set it on the multi-queue TAP ``fd`` belongs to (the
    TAP keeps its own reference: the program's fd is closed here)."""
    program = _load_socket_filter(STEERING_PROGRAM)
    try:
        fcntl.ioctl(fd, TUNSETSTEERINGEBPF, struct.pack("i", program))
    except OSError as e:
        raise LanesUnavailable(f"TAP steering refused: {os.strerror(e.errno or 0)}") from e
    finally:
        os.close(program)


def _load_socket_filter(program: bytes) -> int:
    """bpf(BPF_PROG_LOAD) of an eBPF socket filter (no helpers, no maps); its fd."""
    number = _SYS_BPF.get(os.uname().machine)
    if number is None:
        raise LanesUnavailable(f"no bpf system call number known for {os.uname().machine}")
    libc = ctypes.CDLL(None, use_errno=True)
    instructions = ctypes.create_string_buffer(program, len(program))
    licence = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(_BPF_ATTR_SIZE)
    struct.pack_into(
        "<IIQQ",
        attr,
        0,
        _BPF_PROG_TYPE_SOCKET_FILTER,
        len(program) // 8,
        ctypes.addressof(instructions),
        ctypes.addressof(licence),
    )
    buffer = (ctypes.c_char * _BPF_ATTR_SIZE).from_buffer(attr)
    fd = int(libc.syscall(number, _BPF_PROG_LOAD, buffer, _BPF_ATTR_SIZE))
    if fd < 0:
        code = ctypes.get_errno() or errno.EINVAL
        raise LanesUnavailable(f"cannot load a BPF program: {os.strerror(code)}")
    return fd
