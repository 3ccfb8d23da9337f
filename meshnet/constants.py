"""Names and numbers every part of meshnet agrees on: defined here once, imported everywhere.

A leaf module (it imports nothing of meshnet), so the CLI, the lab, the daemon's services and the
CNI/Docker integrations can share them without pulling in each other's code.
"""

from __future__ import annotations

from typing import Final

BRIDGE: Final = "meshnet"  # the per-host bridge joining containers, the sleeve TAP and VXLAN
SLEEVE_TAP: Final = "vethwe-sleeve"  # the sleeve's TAP port on the bridge
CONTAINER_IFNAME: Final = "ethwe"  # a container's interface on the overlay, by default
CONTROL_PORT: Final = 6783  # TCP: connections; UDP: the sleeve
FASTDP_PORT: Final = 6784  # UDP: kernel VXLAN between neighbours (by default CONTROL_PORT + 1)
# The overlay MTU a user may give (--mtu): IPv4's minimum, up to jumbo frames.
MIN_OVERLAY_MTU: Final = 576
MAX_OVERLAY_MTU: Final = 9216
# IPv6's minimum link MTU (RFC 8200): the kernel turns IPv6 off on a smaller link.
IPV6_MIN_MTU: Final = 1280
# fastdp's probes: IEEE 802 local experimental ethertype (containers may use it too), then a
# magic. Only VXLAN may carry them (the sleeve drops them), or they would prove a VXLAN path that
# does not work; a container's frame of that ethertype without the magic is carried as any other.
FASTDP_PROBE_ETHERTYPE: Final = 0x88B5
FASTDP_PROBE_MAGIC: Final = b"MNFP"
# How long the router waits for IPAM to give an address (a ring still forming, a donor asked);
# clients of an allocating request wait this long plus a margin for the rest of the work.
ALLOCATE_TIMEOUT: Final = 30.0
