"""The sleeve's UDP socket: many datagrams per system call, both ways.

Sending: a run of equal-sized payloads (the last may be shorter) goes out in ONE sendmsg with a
UDP_SEGMENT control message; the kernel (or the NIC) cuts it into datagrams. Receiving: with
UDP_GRO on, the kernel hands over several datagrams of one flow glued together, with a control
message giving their size; `receive` cuts them apart again. Don't-fragment is set, so a datagram
larger than the path MTU fails loudly (MessageTooBig) instead of being fragmented.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any, NoReturn

from meshnet.dataplane import underlay
from meshnet.dataplane.kernel import lanes, netlink
from meshnet.errors import MeshnetError, UserError

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
IP_MTU = 14
IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_DO = 2
IPV6_MTU = 24
SIOCGSKNS = 0x894C  # a socket's network namespace, as an fd

MAX_UDP_PAYLOAD = 65507  # 65535 - 20 (IPv4 header) - 8 (UDP header): also the cap per sendmsg
MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS (128 on the newest kernels; 64 is safe)
RECEIVE_SIZE = 65536 + 4096  # a full GRO batch or any single datagram, with room to spare
_INT = struct.Struct("@i")
_CMSG_SPACE = socket.CMSG_SPACE(_INT.size)
log = logging.getLogger("meshnet.dataplane")

Address = tuple[Any, ...]
Payload = bytes | bytearray | memoryview


class UdpError(MeshnetError):
    """A UDP socket could not be used as asked."""


class UdpSendError(UdpError):
    """A send failed in a way the caller should count (and usually carry on).

    `reason` is short and stable, fit for a counter name: "refused", "too_big", "would_block",
    or the errno's name in lower case ("enetunreach", "eperm", ...).
    """

    reason = "error"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class PeerUnreachable(UdpSendError):
    """ECONNREFUSED: the peer's port is closed (an ICMP port-unreachable came back)."""

    reason = "refused"


class MessageTooBig(UdpSendError):
    """EMSGSIZE (or EINVAL for a GSO segment): a datagram is larger than the path MTU allows."""

    reason = "too_big"

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class SendBufferFull(UdpSendError):
    """EAGAIN on a non-blocking socket: the send buffer is full; the datagrams were dropped."""

    reason = "would_block"


def open_udp(
    port: int,
    *,
    bind: str | None = None,
    rcvbuf: int = 4 * 1024 * 1024,
    sndbuf: int = 4 * 1024 * 1024,
    reuse_port: bool = False,
) -> socket.socket:
    """A bound UDP socket with large buffers, GRO on and don't-fragment set (and SO_REUSEPORT
    with ``reuse_port``: see :func:`open_udp_lanes`).

    Without ``bind``: one dual-stack socket on ``::`` (IPV6_V6ONLY off) that serves IPv4 peers
    as ``::ffff:a.b.c.d`` (see ``meshnet.dataplane.underlay``), or an IPv4 one on a host
    without IPv6. Don't-fragment is set for both families on it.
    """
    if bind is None:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        except OSError:  # IPv6 compiled out or disabled: IPv4 only
            sock, bind = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), "0.0.0.0"
        else:
            bind = "::"
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_DGRAM)
    family = sock.family
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and bind == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf)
        _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)
        # Without GRO (kernel < 5.0) datagrams arrive one by one, which `receive` handles too.
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        # On a dual-stack socket IP_MTU_DISCOVER rules what goes to IPv4-mapped peers.
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
        try:
            sock.bind((bind, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"UDP port {port} on {bind} is already in use") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"cannot bind UDP to {bind}: no such local address") from None
            raise UserError(f"cannot bind UDP {bind}:{port}: {e.strerror}") from None
    except BaseException:
        sock.close()
        raise
    return sock


def open_udp_lanes(
    port: int, *, bind: str | None = None, rcvbuf: int = 4 * 1024 * 1024
) -> tuple[socket.socket, socket.socket | None]:
    """The sleeve's socket, as :func:`open_udp`, and beside it on the same port, where the
    kernel takes the program that splits them, the express lane's: what it sends is marked
    express, and what peers mark so arrives there (see :mod:`meshnet.dataplane.kernel.lanes`).

    A port in use is still an error (UserError): SO_REUSEPORT alone would let a second router
    join the group in silence, so the port is first bound without it.
    """
    probe = open_udp(port, bind=bind, rcvbuf=0, sndbuf=0)
    port = probe.getsockname()[1]  # the one the kernel chose, for port 0
    probe.close()
    bulk = open_udp(port, bind=bind, rcvbuf=rcvbuf, reuse_port=True)
    express = None
    try:
        lanes.attach_reuseport_program(bulk)
        express = open_udp(port, bind=bind, reuse_port=True)
        lanes.mark_express(express)
    except (lanes.LanesUnavailable, UserError, OSError) as e:
        if express is not None:
            express.close()
        log.warning("sleeve: one UDP lane (small packets wait behind bulk): %s", e)
        bulk.close()
        return open_udp(port, bind=bind, rcvbuf=rcvbuf), None
    except BaseException:
        bulk.close()
        raise
    return bulk, express


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)  # root: ignores net.core.*mem_max
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def _batches(payloads: Sequence[Payload]) -> list[tuple[int, int, int]]:
    """Cut the list into (start, end, segment size) runs that one GSO sendmsg can carry.

    A run is equal-sized payloads, optionally ending with one shorter payload; at most
    MAX_SEGMENTS of them and MAX_UDP_PAYLOAD bytes in all. Segment size 0: send alone.
    """
    runs = []
    i, n = 0, len(payloads)
    while i < n:
        size = len(payloads[i])
        limit = min(MAX_SEGMENTS, MAX_UDP_PAYLOAD // size) if size else 1
        j, total = i + 1, size
        while j < n and j - i < limit:
            length = len(payloads[j])
            if length > size or total + length > MAX_UDP_PAYLOAD:
                break
            total += length
            j += 1
            if length < size:
                break  # a shorter payload ends the run
        runs.append((i, j, size if j - i > 1 else 0))
        i = j
    return runs


def send_segments(sock: socket.socket, payloads: Sequence[Payload], addr: Address | None) -> None:
    """Send each payload as its own datagram to `addr` (None: the socket's connected peer).

    Runs of equal-sized payloads (the last of a run may be shorter) go out as one sendmsg with
    UDP_SEGMENT, split where a run would pass 64 segments or 65507 bytes; other payloads go out
    with one send each. Every failure is a UdpSendError (PeerUnreachable, MessageTooBig,
    SendBufferFull on a full non-blocking socket, ...); payloads of earlier runs are already sent.
    """
    for start, end, segment in _batches(payloads):
        try:
            if segment:
                cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("@H", segment))]
                chunk = list(payloads[start:end])
                if addr is None:
                    sock.sendmsg(chunk, cmsg)
                else:
                    sock.sendmsg(chunk, cmsg, 0, addr)
            else:
                if addr is None:
                    sock.send(payloads[start])
                else:
                    sock.sendto(payloads[start], addr)
        except OSError as e:
            _raise_typed(e, payloads[start:end], segment)


def send_one(sock: socket.socket, payload: Payload, addr: Address) -> None:
    """Send one datagram to ``addr``: :func:`send_segments` for the common case of one (a
    batch of small frames), without cutting a list into runs. Errors as there."""
    try:
        sock.sendto(payload, addr)
    except OSError as e:
        _raise_typed(e, (payload,), 0)


def send_gathered(
    sock: socket.socket, buffers: Sequence[Payload], stride: int, total: int, addr: Address
) -> None:
    """Send the datagrams the kernel gathers from ``buffers`` (``total`` bytes, cut every
    ``stride`` bytes) in one sendmsg: the kernel's copy is the only one. At most
    ``MAX_SEGMENTS`` datagrams and ``MAX_UDP_PAYLOAD`` bytes. Errors as :func:`send_segments`."""
    try:
        if total > stride:
            sock.sendmsg(buffers, _segment_cmsg(stride), 0, addr)
        else:
            sock.sendmsg(buffers, (), 0, addr)
    except OSError as e:
        _raise_typed(e, [b"\0" * min(total, stride)], stride if total > stride else 0)


_CMSGS: dict[int, list[tuple[int, int, bytes]]] = {}


def _segment_cmsg(stride: int) -> list[tuple[int, int, bytes]]:
    cmsg = _CMSGS.get(stride)
    if cmsg is None:
        cmsg = _CMSGS[stride] = [(SOL_UDP, UDP_SEGMENT, struct.pack("@H", stride))]
    return cmsg


def receive_into(sock: socket.socket, buffer: bytearray) -> tuple[int, int, Address]:
    """One recvmsg into ``buffer`` (no allocation): (bytes, datagram stride, sender), as
    :func:`receive_run`. 0 bytes with no sender: the socket was shut down for reading."""
    nbytes, ancdata, flags, addr = sock.recvmsg_into([buffer], _CMSG_SPACE)
    if not nbytes:
        return 0, 1, addr
    return nbytes, _stride(ancdata, flags, addr, nbytes), addr


def _stride(ancdata: list[tuple[int, int, bytes]], flags: int, addr: Address, nbytes: int) -> int:
    """The size of the datagrams GRO glued together (``nbytes`` for a single one)."""
    if flags & socket.MSG_TRUNC:
        raise UdpError(f"datagram from {addr} truncated to {nbytes} bytes")
    segment = 0
    for level, kind, value in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(value) >= _INT.size:
            segment = _INT.unpack_from(value)[0]
    return segment if 0 < segment < nbytes else nbytes


def _raise_typed(e: OSError, sent: Sequence[Payload], segment: int) -> NoReturn:
    if e.errno == errno.ECONNREFUSED:
        raise PeerUnreachable("peer refused the datagram (port closed)") from e
    largest = max(len(p) for p in sent)
    if e.errno == errno.EMSGSIZE:
        raise MessageTooBig(
            f"a datagram of {largest} bytes is larger than the path MTU", largest
        ) from e
    if e.errno == errno.EINVAL and segment:
        # GSO refuses a segment that would not fit the MTU (or too many segments) with EINVAL.
        raise MessageTooBig(
            f"UDP segments of {segment} bytes do not fit the path MTU", segment
        ) from e
    if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
        raise SendBufferFull("UDP send buffer full") from e
    code = errno.errorcode.get(e.errno or 0, "error").lower()
    raise UdpSendError(f"UDP send failed: {e.strerror}", code) from e


def receive(
    sock: socket.socket, bufsize: int = RECEIVE_SIZE, *, buffer: bytearray | None = None
) -> tuple[list[memoryview], Address]:
    """One recvmsg: the datagrams it carried (one, or several glued by GRO) and the sender.

    With `buffer`, data lands there (no allocation per call) and the views point into it: use
    them before the next call with the same buffer.
    """
    if buffer is not None:
        nbytes, ancdata, flags, addr = sock.recvmsg_into([buffer], _CMSG_SPACE)
        data = memoryview(buffer)[:nbytes]
    else:
        raw, ancdata, flags, addr = sock.recvmsg(bufsize, _CMSG_SPACE)
        data = memoryview(raw)
        nbytes = len(raw)
    segment = _stride(ancdata, flags, addr, nbytes)
    if segment == nbytes:
        return [data], addr
    return [data[i : i + segment] for i in range(0, nbytes, segment)], addr


def path_mtu(sock: socket.socket, addr: Address) -> int | None:
    """The kernel's current idea of the path MTU toward `addr` (from `sock`'s bound address).

    Asks a throwaway socket, in `sock`'s network namespace, connected to `addr` (no packet is
    sent). None when the kernel has no route there. A PMTU learned from ICMP "fragmentation
    needed" shows up here too.
    """
    try:
        ns_fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    except OSError:
        ns_fd = -1
    try:
        if ns_fd >= 0 and _same_namespace(ns_fd):
            return _probe_mtu(sock.family, sock.getsockname()[0], addr)
        if ns_fd >= 0:
            return netlink.run_in_namespace(
                f"/proc/self/fd/{ns_fd}", _probe_mtu, sock.family, sock.getsockname()[0], addr
            )
        return _probe_mtu(sock.family, sock.getsockname()[0], addr)
    finally:
        if ns_fd >= 0:
            os.close(ns_fd)


def _same_namespace(ns_fd: int) -> bool:
    theirs, ours = os.fstat(ns_fd), os.stat("/proc/thread-self/ns/net")
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def _probe_mtu(family: int, local: str, addr: Address) -> int | None:
    # A dual-stack socket's IPv4 peers: ask an IPv4 socket (IPV6_MTU knows no IPv4 route).
    if family == socket.AF_INET6 and str(addr[0]).startswith(underlay.MAPPED_PREFIX):
        family, addr = socket.AF_INET, (underlay.plain_ip(addr[0]), *addr[1:2])
        local = underlay.plain_ip(local) if local.startswith(underlay.MAPPED_PREFIX) else "0.0.0.0"
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if local not in ("0.0.0.0", "::"):
            probe.bind((local, 0))
        if family == socket.AF_INET:
            probe.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        else:
            probe.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
        probe.connect(addr)
        if family == socket.AF_INET:
            return int(probe.getsockopt(socket.IPPROTO_IP, IP_MTU))
        return int(probe.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU))
    except OSError:
        return None
    finally:
        probe.close()
