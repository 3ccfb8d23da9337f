"""The data plane's kernel-facing pieces against the real kernel: TAP with virtio-net headers,
UDP with GSO and GRO, and containers attached to a bridge.

Everything happens inside namespaces named mnt-<role>-<random>, removed after each test whether
it passes or not; the root namespace is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import os
import re
import select
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

import pytest

from meshnet.dataplane import underlay
from meshnet.dataplane.kernel import attach as attachlib
from meshnet.dataplane.kernel import lanes, namespaces, netlink, tap, udp
from meshnet.dataplane.sleeve import vnet
from meshnet.errors import UserError
from tests.net.conftest import can_ping, ns_run, take_inode


def _suffix() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture
def make_ns() -> Iterator[Callable[[str], str]]:
    """Named namespaces (mnt-<role>-<random>), every one removed after the test."""
    made: list[str] = []

    def make(role: str) -> str:
        name = f"mnt-{role}-{_suffix()}"
        netlink.create_namespace(name)
        made.append(name)
        return name

    yield make
    for name in made:
        netlink.remove_namespace(name)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Long-running helper processes (a container's `sleep`), killed after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*cmd: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _wait_for_namespace_change(pid: int, own: tuple[int, int]) -> None:
    """Wait until process `pid` runs in a namespace other than `own` (after unshare/setns)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
            if (st.st_dev, st.st_ino) != own:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never entered its own network namespace")


def _own_netns() -> tuple[int, int]:
    st = os.stat("/proc/self/ns/net")
    return st.st_dev, st.st_ino


def _bridge_host(make_ns: Callable[[str], str], bridge: str = "meshnet") -> str:
    host = make_ns("h")
    with netlink.namespace(host) as ns:
        ns.create_bridge(bridge)
        ns.set_up(bridge)
    return host


# --- TAP --------------------------------------------------------------------------------------


def _open_tap_on_bridge(host: str, bridge: str = "meshnet") -> tap.Tap:
    dev = netlink.run_in_namespace(host, tap.open_tap, "mntap0")
    with netlink.namespace(host) as ns:
        ns.set_master(dev.name, bridge)
        ns.set_up(dev.name)
    return dev


@dataclass
class _Relay:
    """Frames read from one TAP and written to the other, in both directions, by two threads."""

    taps: tuple[tap.Tap, tap.Tap]
    stop: threading.Event = field(default_factory=threading.Event)
    headers: list[tuple[int, int, int]] = field(default_factory=list)  # (gso_type, size, len)
    errors: list[BaseException] = field(default_factory=list)

    def run(self, src: tap.Tap, dst: tap.Tap) -> None:
        buf = bytearray(tap.READ_SIZE)
        view = memoryview(buf)
        poller = select.poll()
        poller.register(src.fileno(), select.POLLIN)
        try:
            while not self.stop.is_set():
                if not poller.poll(50):
                    continue
                n = src.readinto(buf)
                hdr = vnet.parse_vnet(view[: vnet.VNET_HEADER_SIZE])
                self.headers.append((hdr.gso_type, hdr.gso_size, n - vnet.VNET_HEADER_SIZE))
                dst.write(view[: vnet.VNET_HEADER_SIZE], view[vnet.VNET_HEADER_SIZE : n])
        except BaseException as e:
            self.errors.append(e)

    def __enter__(self) -> _Relay:
        a, b = self.taps
        self.threads = [
            threading.Thread(target=self.run, args=(a, b), daemon=True),
            threading.Thread(target=self.run, args=(b, a), daemon=True),
        ]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)


def _tcp_stream(sender_ns: str, receiver_ns: str, address: str, total: int) -> tuple[float, bool]:
    """Send `total` bytes over TCP from one namespace to another; (seconds, intact)."""
    server = netlink.run_in_namespace(receiver_ns, socket.create_server, (address, 0))
    port = server.getsockname()[1]
    received = hashlib.sha256()
    count = [0]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(1 << 20):
                received.update(chunk)
                count[0] += len(chunk)

    def make_client() -> socket.socket:
        return socket.create_connection((address, port), timeout=10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    block = os.urandom(1 << 20)
    sent = hashlib.sha256()
    start = time.monotonic()
    with netlink.run_in_namespace(sender_ns, make_client) as client:
        left = total
        while left > 0:
            piece = block[: min(left, len(block))]
            client.sendall(piece)
            sent.update(piece)
            left -= len(piece)
    thread.join(30)
    elapsed = time.monotonic() - start
    server.close()
    return elapsed, count[0] == total and sent.digest() == received.digest()


def test_tap_relays_tcp_super_frames_between_two_bridges(make_ns: Callable[[str], str]) -> None:
    """Two hosts, each a bridge with a container and a TAP; a relay copies frames TAP to TAP.

    Reads carry virtio-net headers with gso_type TCPV4 and frames far above 1514 bytes; writing
    them back with the same header makes the TCP stream arrive intact on the far side.
    """
    h1, h2 = _bridge_host(make_ns), _bridge_host(make_ns)
    c1, c2 = make_ns("c"), make_ns("c")
    attachlib.attach(attachlib.resolve_namespace(c1), addresses=["10.40.0.1/24"], mtu=1500, host=h1)
    attachlib.attach(attachlib.resolve_namespace(c2), addresses=["10.40.0.2/24"], mtu=1500, host=h2)
    with _open_tap_on_bridge(h1) as t1, _open_tap_on_bridge(h2) as t2:
        assert t1.vnet_hdr and t1.name == "mntap0"
        with _Relay((t1, t2)) as relay:
            assert can_ping(c1, "10.40.0.2")
            total = 64 << 20
            seconds, intact = _tcp_stream(c1, c2, "10.40.0.2", total)
        assert not relay.errors, relay.errors
    assert intact
    big = [h for h in relay.headers if h[0] & 0x7F == vnet.GSO_TCPV4 and h[2] > 1514]
    assert big, "no TCP super-frames came out of the TAP"
    assert max(h[2] for h in big) > 16000
    largest = max(h[2] for h in relay.headers)
    frames = len(relay.headers)
    print(
        f"\nTAP relay: {total * 8 / seconds / 1e9:.2f} Gbit/s, {frames} frames, "
        f"{len(big)} TCPv4 GSO frames, largest {largest} bytes, "
        f"mean GSO frame {sum(h[2] for h in big) // len(big)} bytes"
    )


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _answer(frame: bytes, my_mac: bytes, my_ip: bytes) -> bytes | None:
    """An ARP reply or ICMP echo reply for `frame` if it asks `my_ip`, else None."""
    dst, src, ethertype = frame[:6], frame[6:12], struct.unpack("!H", frame[12:14])[0]
    if ethertype == 0x0806 and frame[20:22] == b"\x00\x01" and frame[38:42] == my_ip:
        sender_mac, sender_ip = frame[22:28], frame[28:32]
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + my_mac + my_ip + sender_mac + sender_ip
        return src + my_mac + b"\x08\x06" + arp
    if ethertype == 0x0800 and dst == my_mac:
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 1 or ip[16:20] != my_ip or ip[ihl] != 8:  # ICMP echo request to us
            return None
        icmp = bytearray(ip[ihl : struct.unpack("!H", ip[2:4])[0]])
        icmp[0], icmp[2:4] = 0, b"\0\0"
        icmp[2:4] = struct.pack("!H", _checksum(bytes(icmp)))
        header = bytearray(ip[:ihl])
        header[8] = 64
        header[12:16], header[16:20] = ip[16:20], ip[12:16]
        header[10:12] = b"\0\0"
        header[10:12] = struct.pack("!H", _checksum(bytes(header)))
        return src + my_mac + b"\x08\x00" + bytes(header) + bytes(icmp)
    return None


def test_frames_written_to_the_tap_reach_the_container(make_ns: Callable[[str], str]) -> None:
    """The test answers ARP and ping through the TAP: the container's ping succeeds and its ARP
    table holds the MAC the test made up."""
    host = _bridge_host(make_ns)
    c = make_ns("c")
    attachlib.attach(
        attachlib.resolve_namespace(c), addresses=["10.41.0.2/24"], mtu=1500, host=host
    )
    my_mac, my_ip = "02:6d:6e:74:00:01", ipaddress.IPv4Address("10.41.0.1")
    answered: list[int] = []
    stop = threading.Event()
    with _open_tap_on_bridge(host) as dev:
        dev.set_blocking(False)
        with pytest.raises(BlockingIOError):
            while True:  # drain whatever the bridge flooded so far; then the TAP is empty
                dev.read()

        def responder() -> None:
            while not stop.is_set():
                select.select([dev], [], [], 0.05)
                try:
                    data = dev.read()
                except BlockingIOError:
                    continue
                reply = _answer(data[vnet.VNET_HEADER_SIZE :], _mac_bytes(my_mac), my_ip.packed)
                if reply is not None:
                    dev.write(tap.NO_OFFLOAD, reply)
                    answered.append(len(reply))

        thread = threading.Thread(target=responder, daemon=True)
        thread.start()
        try:
            pinged = ns_run(c, "ping", "-c", "2", "-W", "2", str(my_ip))
        finally:
            stop.set()
            thread.join(5)
    assert pinged.returncode == 0, pinged.stdout + pinged.stderr
    assert len(answered) >= 3  # one ARP reply, two echo replies
    neigh = ns_run(c, "ip", "neigh", "show", str(my_ip)).stdout
    assert my_mac in neigh


def _drain(fd: int) -> list[bytes]:
    frames = []
    while True:
        try:
            frames.append(os.read(fd, tap.READ_SIZE))
        except BlockingIOError:
            return frames


def test_the_tap_steers_small_frames_that_are_not_tcp_to_its_express_queue(
    make_ns: Callable[[str], str],
) -> None:
    """The kernel runs the steering program on every frame the TAP sends: small non-TCP frames
    (a ping, a small UDP datagram) to queue 1, TCP of any size (a SYN) and large frames (a big
    ping) to queue 0, so a TCP segment never overtakes its flow's super-frames."""
    host = make_ns("h")
    bulk = netlink.run_in_namespace(host, tap.open_tap, "mntap0", multi_queue=True)
    express = netlink.run_in_namespace(host, tap.open_tap, "mntap0", multi_queue=True)
    with bulk, express:
        lanes.steer_tap(bulk.fileno())
        with netlink.namespace(host) as ns:
            ns.add_address("mntap0", "10.43.0.1/24")
            ns.set_up("mntap0")
        assert (
            ns_run(
                host,
                "ip",
                "neigh",
                "replace",
                "10.43.0.2",
                "lladdr",
                "02:00:00:00:00:02",
                "dev",
                "mntap0",
            ).returncode
            == 0
        )
        for dev in (bulk, express):
            dev.set_blocking(False)
        time.sleep(0.3)  # router solicitations and the like, then quiet
        for dev in (bulk, express):
            _drain(dev.fileno())

        def send() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.sendto(b"small", ("10.43.0.2", 9))
                u.sendto(bytes(1000), ("10.43.0.2", 9))
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                t.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    t.connect(("10.43.0.2", 5201))  # its SYN
                time.sleep(0.05)

        netlink.run_in_namespace(host, send)
        ns_run(host, "ping", "-c", "1", "-W", "0.2", "10.43.0.2")
        ns_run(host, "ping", "-c", "1", "-W", "0.2", "-s", "1000", "10.43.0.2")
        time.sleep(0.1)

        def kinds(frames: list[bytes]) -> list[tuple[int, int]]:
            """(IP protocol, frame length) of each IPv4 frame."""
            out = []
            for data in frames:
                frame = data[vnet.VNET_HEADER_SIZE :]
                if frame[12:14] == b"\x08\x00":
                    out.append((frame[23], len(frame)))
            return out

        to_express, to_bulk = kinds(_drain(express.fileno())), kinds(_drain(bulk.fileno()))
    assert sorted(to_express) == [(1, 98), (17, 47)]  # the ping, the small UDP datagram
    assert sorted(to_bulk) == [(1, 1042), (6, 74), (17, 1042)]  # the SYN, the large ones


def test_where_the_kernel_refuses_the_lane_programs_one_lane_remains(
    make_ns: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel, container or seccomp policy without BPF: the TAP keeps one queue, the port
    one socket (without SO_REUSEPORT, so nobody can join it), and the router goes on."""
    host = make_ns("h")

    def refuse(*_: object) -> None:
        raise lanes.LanesUnavailable("refused here")

    monkeypatch.setattr(lanes, "steer_tap", refuse)
    monkeypatch.setattr(lanes, "attach_reuseport_program", refuse)
    dev, express_queue = netlink.run_in_namespace(host, tap.open_tap_lanes, "mntap1")
    sock, express_sock = netlink.run_in_namespace(host, udp.open_udp_lanes, 0)
    with dev, sock:
        assert express_queue is None and express_sock is None
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        with netlink.namespace(host) as ns:
            assert ns.has_link("mntap1")


def test_open_tap_errors_are_meshnet_errors() -> None:
    with pytest.raises(UserError, match="bad interface name"):
        tap.open_tap("a-name-far-too-long-for-linux")


# --- UDP --------------------------------------------------------------------------------------


@pytest.fixture
def udp_pair(make_ns: Callable[[str], str]) -> tuple[str, str]:
    """Two namespaces joined by a veth (MTU 1500): 10.42.0.1 and 10.42.0.2."""
    a, b = make_ns("a"), make_ns("b")
    with netlink.namespace(a) as ns:
        ns.create_veth_into("mnt0", "mnt0", peer_path=b)
        ns.add_address("mnt0", "10.42.0.1/24")
        ns.set_up("mnt0")
    with netlink.namespace(b) as ns:
        ns.add_address("mnt0", "10.42.0.2/24")
        ns.set_up("mnt0")
    return a, b


def _sockets(pair: tuple[str, str]) -> tuple[socket.socket, socket.socket]:
    a, b = pair
    tx = netlink.run_in_namespace(a, udp.open_udp, 0, bind="10.42.0.1")
    rx = netlink.run_in_namespace(b, udp.open_udp, 0, bind="10.42.0.2")
    rx.settimeout(5)
    return tx, rx


def _collect(rx: socket.socket, count: int) -> tuple[list[bytes], int]:
    """`count` datagrams, and how many receive calls they took."""
    got: list[bytes] = []
    calls = 0
    while len(got) < count:
        datagrams, _ = udp.receive(rx)
        got.extend(bytes(d) for d in datagrams)
        calls += 1
    return got, calls


def test_udp_gso_send_and_gro_receive(udp_pair: tuple[str, str]) -> None:
    tx, rx = _sockets(udp_pair)
    with tx, rx:
        dest = rx.getsockname()
        assert rx.getsockopt(udp.SOL_UDP, udp.UDP_GRO) == 1
        assert rx.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 4 * 1024 * 1024
        equal = [bytes([i]) * 1400 for i in range(40)]
        assert udp._batches(equal) == [(0, 40, 1400)]  # one sendmsg
        udp.send_segments(tx, equal, dest)
        got, calls = _collect(rx, 40)
        assert got == equal
        assert calls < 40, "GRO never coalesced anything"

        # The last may be shorter; more than 64 segments or 65507 bytes take several calls.
        many = [os.urandom(1000) for _ in range(100)] + [b"tail"]
        assert [(s, e) for s, e, _ in udp._batches(many)] == [(0, 64), (64, 101)]
        udp.send_segments(tx, many, dest)
        assert _collect(rx, 101)[0] == many

        mixed = [b"a" * 100, b"b" * 1400, b"c" * 50, b"d" * 1400, b"e" * 1400, b"f" * 7, b""]
        udp.send_segments(tx, mixed, dest)
        assert _collect(rx, len(mixed))[0] == mixed

        # Into a caller's buffer: views into it.
        buffer = bytearray(udp.RECEIVE_SIZE)
        udp.send_segments(tx, equal[:3], dest)
        got3: list[bytes] = []
        while len(got3) < 3:
            views, sender = udp.receive(rx, buffer=buffer)
            got3.extend(bytes(v) for v in views)
        assert got3 == equal[:3] and sender == tx.getsockname()

        assert udp.path_mtu(tx, dest) == 1500


def test_udp_errors_are_typed(udp_pair: tuple[str, str]) -> None:
    tx, rx = _sockets(udp_pair)
    with tx, rx:
        dest = rx.getsockname()
        with pytest.raises(udp.MessageTooBig) as too_big:
            udp.send_segments(tx, [b"x" * 1473], dest)  # 1473 + 28 > 1500, DF set
        assert too_big.value.size == 1473 and too_big.value.reason == "too_big"
        with pytest.raises(udp.MessageTooBig):
            udp.send_segments(tx, [b"x" * 2000, b"y" * 2000], dest)  # GSO segment > MTU
        udp.send_segments(tx, [b"x" * 1472], dest)  # exactly fits
        assert _collect(rx, 1)[0] == [b"x" * 1472]

        closed = rx.getsockname()[0], 9  # nobody listens on port 9
        tx.connect(closed)
        udp.send_segments(tx, [b"ping"], None)
        deadline = time.monotonic() + 5
        with pytest.raises(udp.PeerUnreachable) as refused:
            while time.monotonic() < deadline:
                time.sleep(0.05)
                udp.send_segments(tx, [b"ping", b"pong"], None)
        assert refused.value.reason == "refused"
    with pytest.raises(UserError, match="no such local address"):
        udp.open_udp(0, bind="192.0.2.77")


def test_the_express_lane_takes_small_datagrams_marked_express_in_both_families(
    udp_pair: tuple[str, str],
) -> None:
    """The sleeve's port has two sockets: the reuseport program hands datagrams marked DSCP EF
    of up to EXPRESS_DATAGRAM bytes to the second, everything else (unmarked, or larger, or a
    GSO run) to the first. A port already held is still an error."""
    a, b = udp_pair
    for ns, address in ((a, "fd42::1/64"), (b, "fd42::2/64")):
        with netlink.namespace(ns) as link:
            link.add_address("mnt0", address)
    bulk, express = netlink.run_in_namespace(b, udp.open_udp_lanes, 0)
    plain = netlink.run_in_namespace(a, udp.open_udp, 0)
    marked = netlink.run_in_namespace(a, udp.open_udp, 0)
    assert express is not None
    with bulk, express, plain, marked:
        lanes.mark_express(marked)
        port = bulk.getsockname()[1]
        assert express.getsockname()[1] == port
        for sock in (bulk, express):
            sock.setblocking(False)
        time.sleep(1.5)  # the IPv6 addresses' duplicate detection
        for dest in ("::ffff:10.42.0.2", "fd42::2"):
            plain.sendto(b"p" * 100, (dest, port))
            marked.sendto(b"e" * 100, (dest, port))
            marked.sendto(b"E" * (lanes.EXPRESS_DATAGRAM + 1), (dest, port))
            udp.send_segments(marked, [b"g" * 200] * 4, (dest, port))  # one GSO run
        time.sleep(0.2)

        def received(sock: socket.socket) -> list[tuple[bytes, int]]:
            out = []
            while True:
                try:
                    data, _ = sock.recvfrom(udp.RECEIVE_SIZE)
                except BlockingIOError:
                    return sorted(out)
                out.append((data[:1], len(data)))

        big = lanes.EXPRESS_DATAGRAM + 1
        assert received(express) == [(b"e", 100)] * 2
        assert received(bulk) == sorted([(b"p", 100), (b"E", big), (b"g", 800)] * 2)
    holder = netlink.run_in_namespace(b, socket.socket, socket.AF_INET6, socket.SOCK_DGRAM)
    with holder:
        holder.bind(("::", 0))
        with pytest.raises(UserError, match="already in use"):
            netlink.run_in_namespace(b, udp.open_udp_lanes, holder.getsockname()[1])


def test_one_dual_stack_socket_segments_and_coalesces_both_families(
    udp_pair: tuple[str, str],
) -> None:
    """The sleeve's socket (no bind: ``::`` with IPV6_V6ONLY off) sends one GSO batch to an
    IPv4 peer (as ::ffff:a.b.c.d) and one to an IPv6 peer; both arrive cut right, GRO
    coalesces them, don't-fragment holds for both families, and path_mtu answers for both."""
    a, b = udp_pair
    for ns, address in ((a, "fd42::1/64"), (b, "fd42::2/64")):
        with netlink.namespace(ns) as link:
            link.add_address("mnt0", address)
    tx = netlink.run_in_namespace(a, udp.open_udp, 0)
    rx4 = netlink.run_in_namespace(b, udp.open_udp, 0, bind="10.42.0.2")
    rx6 = netlink.run_in_namespace(b, udp.open_udp, 0, bind="fd42::2")
    with tx, rx4, rx6:
        assert tx.family == socket.AF_INET6 and tx.getsockname()[0] == "::"
        assert tx.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        equal = [bytes([i]) * 1400 for i in range(40)]
        for rx, dest, headers in (
            (rx4, ("::ffff:10.42.0.2", rx4.getsockname()[1]), 28),
            (rx6, ("fd42::2", rx6.getsockname()[1]), 48),
        ):
            rx.settimeout(5)
            udp.send_segments(tx, equal, dest)
            got, calls = _collect(rx, 40)
            assert got == equal
            assert calls < 40, "GRO never coalesced anything"
            fits = 1500 - headers
            udp.send_segments(tx, [b"x" * fits], dest)
            assert _collect(rx, 1)[0] == [b"x" * fits]
            with pytest.raises(udp.MessageTooBig):
                udp.send_segments(tx, [b"x" * (fits + 1)], dest)  # DF: never fragmented
            assert udp.path_mtu(tx, dest) == 1500
        # Senders as the sleeve sees them: an IPv4 one mapped, as underlay.socket_ip spells it.
        back = netlink.run_in_namespace(b, udp.open_udp, 0, bind="10.42.0.2")
        with back:
            back.sendto(b"hello", ("10.42.0.1", tx.getsockname()[1]))
            tx.settimeout(5)
            _, sender = udp.receive(tx)
        assert sender[0] == underlay.socket_ip(socket.AF_INET6, "10.42.0.2")


class _FailingSocket:
    def __init__(self, error: OSError) -> None:
        self.error = error

    def sendto(self, *_: object) -> int:
        raise self.error

    def sendmsg(self, *_: object) -> int:
        raise self.error


@pytest.mark.parametrize(
    ("code", "kind", "reason"),
    [
        (errno.EAGAIN, udp.SendBufferFull, "would_block"),
        (errno.ENETUNREACH, udp.UdpSendError, "enetunreach"),
        (errno.EPERM, udp.UdpSendError, "eperm"),
    ],
)
def test_every_send_failure_is_a_countable_udp_send_error(
    code: int, kind: type[udp.UdpSendError], reason: str
) -> None:
    sock = cast(socket.socket, _FailingSocket(OSError(code, os.strerror(code))))
    for payloads in ([b"one"], [b"a" * 100, b"b" * 100]):
        with pytest.raises(kind) as failed:
            udp.send_segments(sock, payloads, ("192.0.2.1", 9))
        assert failed.value.reason == reason


def test_udp_throughput_send_segments_and_receive(udp_pair: tuple[str, str]) -> None:
    """Not a benchmark gate: shows the rate, and that nothing is lost at a moderate pace."""
    tx, rx = _sockets(udp_pair)
    with tx, rx:
        dest = rx.getsockname()
        rx.settimeout(0.5)
        batch = [os.urandom(1400) for _ in range(44)]  # 61600 bytes: one sendmsg
        received = [0, 0]
        done = threading.Event()

        def drain() -> None:
            buffer = bytearray(udp.RECEIVE_SIZE)
            while True:
                try:
                    datagrams, _ = udp.receive(rx, buffer=buffer)
                except TimeoutError:
                    if done.is_set():
                        return
                    continue
                received[0] += len(datagrams)
                received[1] += 1

        thread = threading.Thread(target=drain, daemon=True)
        thread.start()
        sent = 0
        start = time.monotonic()
        while time.monotonic() - start < 1.0:
            udp.send_segments(tx, batch, dest)
            sent += len(batch)
        elapsed = time.monotonic() - start
        done.set()
        thread.join(5)
    print(
        f"\nUDP GSO/GRO over veth: sent {sent / elapsed:,.0f} datagrams/s "
        f"({sent * 1400 * 8 / elapsed / 1e9:.2f} Gbit/s of payload), received {received[0]} "
        f"of {sent} in {received[1]} receive calls"
    )
    assert received[0] > sent // 2


# --- attach -----------------------------------------------------------------------------------


def _unshared(spawn: Callable[..., subprocess.Popen[bytes]]) -> int:
    """A process in a fresh, unnamed network namespace (a container as docker makes them)."""
    proc = spawn("unshare", "--net", "sleep", "120")
    _wait_for_namespace_change(proc.pid, _own_netns())
    return proc.pid


def _host_link(host: str, ifname: str) -> netlink.LinkInfo | None:
    with netlink.namespace(host) as ns:
        return ns.link(ifname) if ns.has_link(ifname) else None


def test_attach_detach_and_list(
    make_ns: Callable[[str], str], spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    host = _bridge_host(make_ns)
    named = make_ns("c")
    ref = attachlib.resolve_namespace(named)
    assert ref.name == named and ref.path == f"/var/run/netns/{named}"

    first = attachlib.attach(ref, addresses=["10.44.0.1/24"], mtu=1400, host=host)
    assert first.namespace == named and first.ifname == "ethwe" and first.mtu == 1400
    assert first.addresses == ("10.44.0.1/24",)
    assert first.host_ifname.startswith("vethwe") and len(first.host_ifname) <= 15
    assert first.host_ifname == attachlib.host_ifname_for(ref)
    assert int(first.mac.split(":")[0], 16) & 0x03 == 0x02  # unicast, locally administered
    port = _host_link(host, first.host_ifname)
    assert port is not None and port.up and port.mtu == 1400
    with netlink.namespace(host) as ns:
        assert port.master == ns.index("meshnet")
    with netlink.namespace(named) as ns:
        inner = ns.link("ethwe")
        assert inner.up and inner.mtu == 1400 and inner.mac == first.mac
        assert any(
            r.destination == "10.44.0.0/24" and r.ifindex == inner.index for r in ns.routes("ethwe")
        )

    # Idempotent: the same call changes nothing, not even the interface.
    again = attachlib.attach(ref, addresses=["10.44.0.1/24"], mtu=1400, host=host)
    assert again == first
    with netlink.namespace(named) as ns:
        assert ns.link("ethwe").index == inner.index

    # More addresses are added (a second subnet gets its route via ethwe).
    more = attachlib.attach(ref, addresses=["10.44.0.1/24", "10.45.0.1/16"], mtu=1400, host=host)
    assert set(more.addresses) == {"10.44.0.1/24", "10.45.0.1/16"} and more.mac == first.mac
    with netlink.namespace(named) as ns:
        assert "10.45.0.0/16" in {r.destination for r in ns.routes("ethwe")}

    # By PID, and by /proc/PID/ns/net path, of namespaces that have no name.
    pid_a, pid_b = _unshared(spawn), _unshared(spawn)
    by_pid = attachlib.resolve_namespace(str(pid_a))
    assert by_pid.name == by_pid.path == f"/proc/{pid_a}/ns/net"
    a = attachlib.attach(by_pid, addresses=["10.44.0.2/24"], mtu=1400, host=host)
    by_path = attachlib.resolve_namespace(f"/proc/{pid_b}/ns/net")
    b = attachlib.attach(
        by_path, addresses=["10.44.0.3/24"], mtu=1400, mac="02:00:0a:2c:00:03", host=host
    )
    assert b.mac == "02:00:0a:2c:00:03"
    assert len({first.host_ifname, a.host_ifname, b.host_ifname}) == 3

    # Attached containers reach each other over the bridge, both ways.
    assert can_ping(named, "10.44.0.2") and can_ping(named, "10.44.0.3")
    back = subprocess.run(
        ["nsenter", f"--net=/proc/{pid_b}/ns/net", "ping", "-c", "1", "-W", "1", "10.44.0.1"],
        capture_output=True,
        timeout=10,
    )
    assert back.returncode == 0

    # The bridge is the truth: everything is found again without any registry.
    listed = attachlib.list_attachments(host=host)
    assert {x.namespace: x for x in listed} == {
        named: more,
        a.namespace: a,
        b.namespace: b,
    }

    # Detach one address, then the last one, which removes the veth; then nothing to do.
    assert attachlib.detach(ref, addresses=["10.45.0.1/16"], host=host)
    with netlink.namespace(named) as ns:
        assert ns.link("ethwe").addresses[0] == "10.44.0.1/24"
    by_name = {x.namespace: x for x in attachlib.list_attachments(host=host)}
    assert by_name[named].addresses == ("10.44.0.1/24",)
    with netlink.namespace(named) as ns:
        assert "10.45.0.0/16" not in {r.destination for r in ns.routes("ethwe")}
    assert not attachlib.detach(ref, addresses=["10.45.0.1/16"], host=host)
    assert attachlib.detach(ref, addresses=["10.44.0.1/24"], host=host)
    with netlink.namespace(named) as ns:
        assert not ns.has_link("ethwe")
    assert _host_link(host, first.host_ifname) is None
    assert not attachlib.detach(ref, host=host)

    # Detach without addresses removes the whole veth.
    assert attachlib.detach(by_path, host=host)
    assert _host_link(host, b.host_ifname) is None
    assert [x.namespace for x in attachlib.list_attachments(host=host)] == [a.namespace]

    # A container that dies takes its veth with it.
    os.kill(pid_a, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while attachlib.list_attachments(host=host) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert attachlib.list_attachments(host=host) == []


def test_an_attached_containers_mac_is_pinned_to_its_port_and_never_ages_out(
    make_ns: Callable[[str], str],
) -> None:
    """A learned entry aged out after the bridge's ageing time (5 min) of silence, and came back
    with the next frame: each time news for fastdp on every neighbour, for every idle one."""
    host = _bridge_host(make_ns)
    named = make_ns("c")
    ref = attachlib.resolve_namespace(named)
    first = attachlib.attach(ref, addresses=["10.44.0.1/24"], mtu=1400, host=host)
    # Ageing after one second: a learned entry would be gone by the end of this test.
    ageing = ns_run(host, "ip", "link", "set", "meshnet", "type", "bridge", "ageing_time", "100")
    assert ageing.returncode == 0, ageing.stderr
    ns_run(named, "ping", "-c", "1", "-W", "1", "10.44.0.9")  # a frame (an ARP request)
    time.sleep(2.5)

    def pinned() -> str:
        out = ns_run(host, "bridge", "fdb", "show", "br", "meshnet").stdout
        return "\n".join(line for line in out.splitlines() if "static" in line)

    assert f"{first.mac} dev {first.host_ifname} sticky master meshnet static" in pinned()
    with netlink.namespace(host) as ns:
        assert first.mac in ns.learned_macs("meshnet", exclude=set())

    # A new MAC replaces the pinned one.
    other = "02:11:22:33:44:55"
    again = attachlib.attach(ref, addresses=["10.44.0.1/24"], mtu=1400, host=host, mac=other)
    assert again.mac == other
    assert other in pinned() and first.mac not in pinned()


def test_a_container_taking_anothers_mac_does_not_draw_its_frames(
    make_ns: Callable[[str], str],
) -> None:
    """The pinned entry is sticky: a container that sets its MAC to its neighbour's and sends
    from it does not move that MAC to its own port (a learned entry moved, and the bridge then
    handed it the neighbour's unicasts)."""
    host = _bridge_host(make_ns)
    victim_ns, thief_ns = make_ns("v"), make_ns("t")
    victim = attachlib.attach(
        attachlib.resolve_namespace(victim_ns), addresses=["10.44.0.1/24"], mtu=1400, host=host
    )
    thief = attachlib.attach(
        attachlib.resolve_namespace(thief_ns), addresses=["10.44.0.2/24"], mtu=1400, host=host
    )
    taken = ns_run(thief_ns, "ip", "link", "set", "ethwe", "address", victim.mac)
    assert taken.returncode == 0, taken.stderr
    # The thief keeps sending from the victim's MAC (ARP requests) while the table is read.
    sending = subprocess.Popen(
        ["ip", "netns", "exec", thief_ns, "ping", "-i", "0.05", "-w", "2", "10.44.0.9"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        entries = [
            line
            for line in ns_run(host, "bridge", "fdb", "show", "br", "meshnet").stdout.splitlines()
            if line.startswith(victim.mac + " ")
        ]
    finally:
        sending.kill()
        sending.wait()
    assert thief.host_ifname != victim.host_ifname
    assert entries == [f"{victim.mac} dev {victim.host_ifname} sticky master meshnet static"]


def test_attach_refuses_bad_input(
    make_ns: Callable[[str], str], spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    host = _bridge_host(make_ns)
    c1, c2, c3 = make_ns("c"), make_ns("c"), make_ns("c")
    ref1 = attachlib.resolve_namespace(c1)

    for bad in ("10.44.0.300/24", "nonsense", "10.44.0.1/33", "10.44.0.1"):
        with pytest.raises(UserError, match=re.escape(f"bad address '{bad}'")):
            attachlib.attach(ref1, addresses=[bad], mtu=1400, host=host)
    with netlink.namespace(c1) as ns:
        assert not ns.has_link("ethwe")

    missing = f"mnt-nope-{_suffix()}"
    for spec in (missing, "999999999", "/proc/999999999/ns/net", "/etc/hostname"):
        with pytest.raises(UserError, match="no such container namespace"):
            attachlib.resolve_namespace(spec)
    assert not netlink.namespace_exists(missing)

    attachlib.attach(ref1, addresses=["10.44.0.1/24"], mtu=1400, host=host)
    with pytest.raises(UserError, match=f"address 10.44.0.1 is already in use by container {c1}"):
        attachlib.attach(
            attachlib.resolve_namespace(c2), addresses=["10.44.0.1/24"], mtu=1400, host=host
        )
    with netlink.namespace(c2) as ns:
        assert not ns.has_link("ethwe")
    # Also when the container holding it has no name.
    pid = _unshared(spawn)
    anonymous = attachlib.attach(
        attachlib.resolve_namespace(str(pid)), addresses=["10.44.0.9/24"], mtu=1400, host=host
    )
    with pytest.raises(UserError, match=f"in use by container {anonymous.namespace}"):
        attachlib.attach(ref1, addresses=["10.44.0.9/24"], mtu=1400, host=host)

    # An ethwe that is not ours (a veth whose peer is not on our bridge) is left alone.
    with netlink.namespace(c3) as ns:
        ns.create_veth_into("ethwe", "other", peer_path=None)
    ref3 = attachlib.resolve_namespace(c3)
    with pytest.raises(UserError, match="already exists in container"):
        attachlib.attach(ref3, addresses=["10.44.0.3/24"], mtu=1400, host=host)
    with pytest.raises(UserError, match="not attached"):
        attachlib.detach(ref3, host=host)
    with netlink.namespace(c3) as ns:
        assert ns.has_link("ethwe")

    with pytest.raises(UserError, match="no bridge"):
        attachlib.attach(ref1, addresses=["10.44.0.1/24"], mtu=1400, bridge="nobridge", host=host)
    with pytest.raises(UserError, match="bad MTU"):
        attachlib.attach(ref1, addresses=["10.44.0.1/24"], mtu=20, host=host)


def test_netlink_namespace_accepts_paths(
    make_ns: Callable[[str], str], spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    named = make_ns("p")
    with netlink.namespace(f"/var/run/netns/{named}") as ns:
        assert ns.has_link("lo")
    pid = _unshared(spawn)
    with netlink.namespace(f"/proc/{pid}/ns/net") as ns:
        assert [link.name for link in ns.links()] == ["lo"]
    assert netlink.namespace_inode(named) == netlink.namespace_inode(f"/var/run/netns/{named}")
    assert (
        netlink.run_in_namespace(named, lambda: os.stat("/proc/thread-self/ns/net").st_ino)
        == (netlink.namespace_inode(named)[1])
    )
    with pytest.raises(netlink.NamespaceNotFound):
        netlink.run_in_namespace(f"mnt-nope-{_suffix()}", lambda: None)


def test_a_namespace_with_a_dead_ones_inode_has_a_cookie_and_port_name_of_its_own(
    make_ns: Callable[[str], str],
) -> None:
    """The kernel hands a gone namespace's inode to a later one; never its cookie."""
    cookies: set[int] = set()
    for _ in range(8):  # until no other process's namespace takes the inode first
        dead = make_ns("dead")
        ref = attachlib.resolve_namespace(dead)
        cookie, port = namespaces.cookie_of(ref.path), attachlib.host_ifname_for(ref)
        cookies.add(cookie)
        netlink.remove_namespace(dead)
        heir = take_inode(ref.inode, lambda: make_ns("heir"), netlink.remove_namespace)
        if heir is not None:
            break
    assert heir is not None, "other processes took every inode we freed"
    heir_ref = attachlib.resolve_namespace(heir)
    assert heir_ref.inode == ref.inode
    assert namespaces.cookie_of(heir_ref.path) not in cookies
    assert attachlib.host_ifname_for(heir_ref) != port


def test_every_namespace_in_sight_is_found_and_a_port_into_one_out_of_sight_is_told(
    make_ns: Callable[[str], str], spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    host = _bridge_host(make_ns)
    named = make_ns("n")
    by_pid = _unshared(spawn)
    mounted_pid = _unshared(spawn)
    mount_point = f"/tmp/mnt-bind-{_suffix()}"
    open(mount_point, "w").close()
    subprocess.run(["mount", "--bind", f"/proc/{mounted_pid}/ns/net", mount_point], check=True)
    try:
        os.kill(mounted_pid, signal.SIGKILL)  # the bind mount alone keeps it now
        os.waitpid(mounted_pid, 0)
        wanted = {
            namespaces.cookie_of(path)
            for path in (f"/var/run/netns/{named}", f"/proc/{by_pid}/ns/net", mount_point)
        }
        visible = namespaces.visible_namespaces()
        assert wanted <= {v.cookie for v in visible}
        assert len({v.cookie for v in visible}) == len(visible)  # each one once
        assert mount_point in {v.path for v in visible}
    finally:
        subprocess.run(["umount", mount_point], check=False)
        os.unlink(mount_point)

    # A container attached, then kept alive by an open file only: its port leads out of sight.
    hidden_pid = _unshared(spawn)
    attached = attachlib.attach(
        attachlib.resolve_namespace(str(hidden_pid)),
        addresses=["10.46.0.2/24"],
        mtu=1400,
        host=host,
    )
    seen = attachlib.bridge_namespaces(host=host, interfaces=True)
    assert seen.unseen == ()
    [(inode, interfaces)] = seen.interfaces.items()
    assert interfaces == {"ethwe": ("10.46.0.2/24",)} and inode in seen.inodes
    fd = os.open(f"/proc/{hidden_pid}/ns/net", os.O_RDONLY)
    try:
        hidden_cookie = netlink.namespace_cookies([f"/proc/self/fd/{fd}"])[f"/proc/self/fd/{fd}"]
        os.kill(hidden_pid, signal.SIGKILL)
        os.waitpid(hidden_pid, 0)
        assert hidden_cookie[1] not in {v.cookie for v in namespaces.visible_namespaces()}
        assert attachlib.bridge_namespaces(host=host).unseen == (attached.host_ifname,)
    finally:
        os.close(fd)  # the namespace goes, and its port with it
    deadline = time.monotonic() + 5
    while attachlib.bridge_namespaces(host=host).unseen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert attachlib.bridge_namespaces(host=host) == attachlib.BridgeNamespaces(frozenset(), (), {})


def _notified_within(
    monitor: socket.socket, changed: Callable[[bytes], bool], seconds: float
) -> bool:
    """Whether ``monitor`` receives, within ``seconds``, a datagram that ``changed`` accepts."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if select.select([monitor], [], [], left)[0] and changed(monitor.recv(65536)):
            return True
    return False


def test_the_link_monitor_reports_a_port_joining_and_leaving_a_bridge(
    make_ns: Callable[[str], str],
) -> None:
    """What lets the ramps scan their bridge only when something changed: a veth put on the
    bridge and deleted each arrive as notifications; silence while nothing changes."""
    ns = make_ns("links")
    with netlink.namespace(ns) as host:
        host.create_bridge("mntbr0")
        host.set_up("mntbr0")
    monitor = netlink.run_in_namespace(ns, netlink.open_link_monitor)
    monitor.settimeout(0)
    with monitor:

        def changed_within(seconds: float) -> bool:
            return _notified_within(monitor, netlink.links_changed, seconds)

        assert not changed_within(0.3)
        ns_run(ns, "ip", "link", "add", "mntp0", "type", "veth", "peer", "name", "mntp1")
        ns_run(ns, "ip", "link", "set", "mntp0", "master", "mntbr0")
        assert changed_within(2)
        while changed_within(0.3):
            pass  # the rest of that burst
        ns_run(ns, "ip", "link", "del", "mntp0")
        assert changed_within(2)


def test_the_route_monitor_reports_routes_that_lead_elsewhere(
    make_ns: Callable[[str], str],
) -> None:
    """What makes a router dial the addresses it had no route to once it has one: routes added
    and removed arrive as notifications; an address of our own alone (the local table) not."""
    ns = make_ns("routes")
    ns_run(ns, "ip", "link", "add", "mntr0", "type", "veth", "peer", "name", "mntr1")
    for end in ("mntr0", "mntr1"):
        ns_run(ns, "sysctl", "-qw", f"net.ipv6.conf.{end}.disable_ipv6=1")  # no link-local
        ns_run(ns, "ip", "link", "set", end, "up")
    monitor = netlink.run_in_namespace(ns, netlink.open_route_monitor)
    monitor.settimeout(0)
    with monitor:

        def changed_within(seconds: float) -> bool:
            return _notified_within(monitor, netlink.routes_changed, seconds)

        assert not changed_within(0.3)
        ns_run(ns, "ip", "address", "add", "10.77.0.1/32", "dev", "mntr0")
        assert not changed_within(0.5)  # only a local-table route
        ns_run(ns, "ip", "address", "add", "10.77.1.1/24", "dev", "mntr0")
        assert changed_within(2)  # its subnet's route
        ns_run(ns, "ip", "route", "add", "10.78.0.0/16", "via", "10.77.1.2")
        assert changed_within(2)
        ns_run(ns, "ip", "-6", "route", "add", "fd77::/64", "dev", "lo")
        assert changed_within(2)
        ns_run(ns, "ip", "route", "del", "10.78.0.0/16")
        assert changed_within(2)
