"""The daemon's settings: one frozen dataclass; its flags and variables: cli/launch_options."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from meshnet.constants import CONTROL_PORT
from meshnet.dns.settings import DnsSettings
from meshnet.integrations.docker.settings import DockerSettings

DEFAULT_STATE_DIR = Path("/var/lib/meshnet")
DEFAULT_API_SOCKET = Path("/run/meshnet/meshnet.sock")
DEFAULT_IPALLOC_RANGE = IPv4Network("10.32.0.0/12")


def default_state_dir() -> Path:
    return Path(os.environ.get("MESHNET_STATE_DIR", str(DEFAULT_STATE_DIR)))


def default_api_socket() -> Path:
    return Path(os.environ.get("MESHNET_API_SOCKET", str(DEFAULT_API_SOCKET)))


@dataclass(frozen=True)
class Config:
    peers: tuple[str, ...] = ()
    nickname: str = field(default_factory=socket.gethostname)
    port: int = CONTROL_PORT
    password: bytes | None = field(default=None, repr=False)
    state_dir: Path = field(default_factory=default_state_dir)
    api_socket: Path = field(default_factory=default_api_socket)
    conn_limit: int = 100
    # Peers learned from gossip are dialled only while we have fewer connections than this
    # (flat networks: see meshnet.gossip.connection_maker); traffic partners beyond it.
    discovery_limit: int = 8
    discovery: bool = True
    dataplane: bool = True  # False: control plane only (no bridge, TAP or UDP)
    # Kernel VXLAN to directly reachable peers; with a password only to peers in these subnets
    # (VXLAN carries frames in the clear).
    fastdp: bool = True
    # VXLAN's UDP port; None: the control port + 1 (6784 by default), as Weave's.
    fastdp_port: int | None = None
    trusted_subnets: tuple[IPv4Network | IPv6Network, ...] = ()
    # Connection liveness: a heartbeat is sent after this much idle time; a connection that has
    # received nothing for three intervals (and a bit) is dead.
    heartbeat_interval: float = 5.0
    handshake_timeout: float = 10.0
    gossip_interval: float = 30.0
    # IPAM: the range peers divide among themselves, where `attach` allocates by default, and
    # how the range is first divided: consensus[=N] (empty: over the launch peers and us),
    # seed=NAME,... or observer.
    ipalloc_range: IPv4Network = DEFAULT_IPALLOC_RANGE
    ipalloc_default_subnet: IPv4Network | None = None
    ipalloc_init: str = ""
    # The IPv6 ring (dual-stack containers): off with ``ipv6`` False (``--no-ipv6``); its range
    # None: a ULA /48 derived from the IPv4 ring's seed; its default subnet None: the first /64.
    ipv6: bool = True
    ipalloc_range6: IPv6Network | None = None
    ipalloc_default_subnet6: IPv6Network | None = None
    # Launch anyway when the range overlaps a route the host already has (Weave's netcheck).
    ipalloc_range_overlap_ok: bool = False
    # Dial again the targets `connect`/`forget` left in the state directory (Weave's --resume).
    resume: bool = True
    # The overlay's MTU (containers, the bridge, the sleeve, VXLAN); None: the underlay's minus
    # the encapsulation.
    mtu: int | None = None
    log_level: str = "info"  # debug, info, warning or error
    dns: DnsSettings = field(default_factory=DnsSettings)  # domain, TTL, upstreams, address
    # The API also over HTTP on this loopback address (for Prometheus), besides the socket.
    http_addr: tuple[str, int] | None = None
    # Only GET /metrics over HTTP on this address (any: a Prometheus on another host).
    metrics_addr: tuple[str, int] | None = None
    # Ramps: traffic from outside the overlay to this host's containers keeps its source
    # address (else it is masqueraded to the exposed address, like that to other hosts').
    no_masq_local: bool = False
    # Isolation between subnets and anti-spoofing on the bridge (nftables): without it
    # (``--no-isolation``) any container may reach any subnet and send from any address, so a
    # launch without working nftables refuses to start unless told so.
    isolation: bool = True
    # Docker: the Engine API to watch and attach by id, and the network/IPAM plugin's socket.
    docker: DockerSettings = field(default_factory=DockerSettings)

    @property
    def heartbeat_timeout(self) -> float:
        return 3 * self.heartbeat_interval + 1.0

    @property
    def vxlan_port(self) -> int:
        """The UDP port fastdp's VXLAN device uses."""
        return self.fastdp_port if self.fastdp_port is not None else self.port + 1

    @property
    def log_file(self) -> Path:
        return self.state_dir / "meshnet.log"
