"""The sleeve's TAP device: Ethernet frames in and out of the kernel, with virtio-net headers.

With IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4|TSO6|TSO_ECN) the kernel hands over whole TCP
super-frames (up to ~64 KiB, with a 10-byte virtio-net header saying how to segment them) instead
of MTU-sized frames, and accepts the same on write: it segments, or passes them on unsegmented
through bridge and veth. Frames carry partial checksums (the header's NEEDS_CSUM flag), so whoever
carries them must protect integrity itself (UDP checksum, or an encryption MAC).

The TAP lives in the network namespace of the thread that opens it: open it inside the right
namespace (see `netlink.run_in_namespace`).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct

from meshnet.dataplane.kernel import lanes
from meshnet.dataplane.sleeve.vnet import VNET_HEADER_SIZE, VnetHeader, pack_vnet
from meshnet.errors import MeshnetError, UserError

TUN_DEVICE = "/dev/net/tun"
log = logging.getLogger("meshnet.dataplane")

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0

IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN

IFNAMSIZ = 16
# Enough for the largest GSO frame the kernel hands a TAP: a 64 KiB IP packet, an Ethernet header
# with a VLAN tag, and the virtio-net header.
READ_SIZE = VNET_HEADER_SIZE + 18 + 65535


class TapError(MeshnetError):
    """The TAP device could not be opened, configured or used."""


class TapUnavailable(TapError, UserError):
    """The machine cannot make TAP devices (no /dev/net/tun, or no privilege)."""


NO_OFFLOAD = pack_vnet(VnetHeader())  # a plain, fully checksummed frame


class Tap:
    """An open TAP device. Reads and writes are whole frames (preceded by a vnet header)."""

    def __init__(self, fd: int, name: str, vnet_hdr: bool) -> None:
        self._fd = fd
        self.name = name
        self.vnet_hdr = vnet_hdr

    def fileno(self) -> int:
        if self._fd < 0:
            raise TapError(f"TAP {self.name} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def read(self, bufsize: int = READ_SIZE) -> bytes:
        """One frame: the 10-byte virtio-net header (when vnet_hdr) followed by the frame.

        Blocks until a frame arrives; in non-blocking mode raises BlockingIOError instead.
        """
        return os.read(self.fileno(), bufsize)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Like `read`, into a caller's buffer (no allocation per frame); returns the length."""
        return os.readv(self.fileno(), [buffer])

    def write_parts(self, parts: list[bytes | bytearray | memoryview]) -> int:
        """Hand one frame to the kernel gathered from ``parts`` (its virtio-net header first),
        in a single writev: a super-frame goes in as its pieces, uncopied."""
        try:
            return os.writev(self.fileno(), parts)
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise TapError(f"TAP {self.name} rejected a frame (bad virtio-net header)") from e
            if e.errno == errno.EIO:
                raise TapError(f"TAP {self.name} is down or detached") from e
            raise

    def write(
        self, vnet: bytes | bytearray | memoryview, frame: bytes | bytearray | memoryview
    ) -> int:
        """Hand one frame to the kernel with its virtio-net header, in a single writev.

        Without vnet_hdr, pass b"" as `vnet`.
        """
        try:
            return os.writev(self.fileno(), [vnet, frame] if vnet else [frame])
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise TapError(
                    f"TAP {self.name} rejected a frame of {len(frame)} bytes "
                    f"(bad virtio-net header or size)"
                ) from e
            if e.errno == errno.EIO:
                raise TapError(f"TAP {self.name} is down or detached") from e
            raise

    def set_blocking(self, blocking: bool) -> None:
        os.set_blocking(self.fileno(), blocking)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Tap({self.name!r}, fd={self._fd}, vnet_hdr={self.vnet_hdr})"


def open_tap(
    name: str, *, vnet_hdr: bool = True, persistent: bool = False, multi_queue: bool = False
) -> Tap:
    """Create (or attach to) the TAP device `name` in the current thread's network namespace.

    With vnet_hdr, every read and write carries a virtio-net header and the kernel may hand over
    TCP super-frames (checksum and TSO offloads are switched on). A non-persistent TAP disappears
    when the returned Tap is closed. With multi_queue, each open of the same name is one more
    queue of it (the same flags each time); which queue a frame goes to is the kernel's choice
    (see :mod:`meshnet.dataplane.kernel.lanes`).
    """
    encoded = name.encode()
    if not encoded or len(encoded) >= IFNAMSIZ or b"/" in encoded or b" " in encoded:
        raise UserError(
            f"bad interface name {name!r}: 1 to {IFNAMSIZ - 1} characters, no / or space"
        )
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TapUnavailable(
            f"{TUN_DEVICE} does not exist: this kernel has no TUN/TAP support, or the device "
            "node is missing (in a container, pass --device /dev/net/tun)"
        ) from None
    except PermissionError:
        raise TapUnavailable(f"cannot open {TUN_DEVICE}: needs root (CAP_NET_ADMIN)") from None
    try:
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        flags |= IFF_MULTI_QUEUE if multi_queue else 0
        ifr = struct.pack("16sH22x", encoded, flags)
        try:
            result = fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as e:
            if e.errno == errno.EPERM:
                raise TapUnavailable(
                    f"cannot create TAP {name}: needs root (CAP_NET_ADMIN)"
                ) from None
            if e.errno == errno.EBUSY:
                raise TapError(f"TAP {name} is already in use by another process") from None
            if e.errno == errno.EINVAL:
                raise TapError(
                    f"cannot create TAP {name}: an interface of another kind has that name"
                ) from None
            raise TapError(f"cannot create TAP {name}: {os.strerror(e.errno or 0)}") from e
        actual = result[:IFNAMSIZ].split(b"\0", 1)[0].decode()
        if vnet_hdr:
            try:
                fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS)
            except OSError as e:
                raise TapError(
                    f"cannot enable offloads on TAP {name}: {os.strerror(e.errno or 0)}"
                ) from e
        try:
            fcntl.ioctl(fd, TUNSETPERSIST, 1 if persistent else 0)
        except OSError as e:
            raise TapError(
                f"cannot set persistence of TAP {name}: {os.strerror(e.errno or 0)}"
            ) from e
    except BaseException:
        os.close(fd)
        raise
    return Tap(fd, actual, vnet_hdr)


def open_tap_lanes(name: str) -> tuple[Tap, Tap | None]:
    """The TAP ``name`` (with virtio-net headers), and its express queue, where the kernel
    takes the program that steers small frames there (see
    :mod:`meshnet.dataplane.kernel.lanes`); else one queue and None."""
    try:
        tap = open_tap(name, multi_queue=True)
    except TapError as e:
        log.warning("sleeve: one TAP queue (small frames wait behind bulk): %s", e)
        return open_tap(name), None
    express = None
    try:
        express = open_tap(name, multi_queue=True)
        lanes.steer_tap(tap.fileno())
    except (TapError, lanes.LanesUnavailable) as e:
        log.warning("sleeve: one TAP queue (small frames wait behind bulk): %s", e)
        if express is not None:
            express.close()
        return tap, None
    return tap, express
