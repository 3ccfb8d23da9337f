"""The data plane's trio shell: owns the bridge, the sleeve TAP and UDP socket, the forwarder
threads, per-neighbour UDP path liveness, and container attachment.

The packet loops run in OS threads (forwarder.py) and read an immutable `Snapshot` that this
shell rebuilds and swaps by reference whenever the router publishes new routes or links (its
`Watch` values; a heartbeat publishes nothing). Path verdicts go back as `PathVerdict` values
through `Router.report_path`, which never calls back. Control datagrams (heartbeats, path-MTU
probes) come back from the receive thread through the trio token.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import trio

from meshnet.config import Config
from meshnet.constants import BRIDGE, MIN_OVERLAY_MTU, SLEEVE_TAP
from meshnet.dataplane import underlay
from meshnet.dataplane.fastdp import core as fastdp_core
from meshnet.dataplane.fastdp.service import FastDatapath
from meshnet.dataplane.kernel import attach as attachment
from meshnet.dataplane.kernel import namespaces, netlink
from meshnet.dataplane.kernel.tap import Tap, open_tap_lanes
from meshnet.dataplane.kernel.udp import open_udp_lanes
from meshnet.dataplane.punch.core import Endpoint
from meshnet.dataplane.punch.service import PunchService
from meshnet.dataplane.sleeve import wire
from meshnet.dataplane.sleeve.forwarder import Forwarder, Neighbour, Sequences, Snapshot
from meshnet.dataplane.sleeve.forwarding import ROUTE_GRACE
from meshnet.dataplane.sleeve.path import PathState, SendHeartbeat, SendProbe, UdpPath
from meshnet.dataplane.sleeve.segments import segments_per_send
from meshnet.dataplane.sleeve.switch import Switch, derived_mac
from meshnet.errors import UserError
from meshnet.gossip.events import PathVerdict, PeerLink
from meshnet.gossip.identity import format_peer_name
from meshnet.gossip.router import Router
from meshnet.gossip.routes import Routes
from meshnet.node.namespace_owners import NamespaceId, Namespaces, SeenNamespace

log = logging.getLogger("meshnet.dataplane")

ENCAPSULATION_OVERHEAD = wire.ENCAPSULATION_OVERHEAD
MIN_PROBE_PAYLOAD = 548  # UdpPath's safe starting point
# Whatever waits in the socket is latency for every packet behind it (FACTS: ~175 ms at 16 MB),
# but GRO queues a whole GSO send as ONE buffer, so a full socket drops ~45 datagrams at once:
# at 1 MiB, bursts cost ~0.2% of super-frames and TCP fell back to fast retransmits (~10k per
# 10 s run, measured). 4 MiB is ~8 ms at 4 Gbit/s, and measured no drops.
RECEIVE_BUFFER = 1 << 22


def underlay_mtu(ignore: set[str]) -> int:
    """The smallest MTU among this host's real links (what every underlay path can carry)."""
    with netlink.namespace(None) as ns:
        links = ns.links()
    candidates = [
        link.mtu
        for link in links
        if link.up
        and link.name != "lo"
        and link.name not in ignore
        and link.master is None
        and link.kind not in ("bridge", "tun")
    ]
    return min(candidates, default=1500)


def overlay_mtu(underlay: int, wanted: int | None) -> int:
    """The containers' MTU: ``wanted`` (--mtu) if the underlay carries it with the sleeve's
    headers (fragments would cost every packet twice), else the most it carries."""
    most = underlay - ENCAPSULATION_OVERHEAD
    if wanted is not None and wanted > most:
        raise UserError(
            f"--mtu {wanted}: the underlay's MTU {underlay} leaves at most {most} for the overlay "
            f"({ENCAPSULATION_OVERHEAD} bytes go to encapsulation)"
        )
    if most < MIN_OVERLAY_MTU:
        raise UserError(f"the underlay MTU leaves only {most} bytes for containers")
    return most if wanted is None else wanted


def _ttl_message(ip: str, ttl: int) -> tuple[int, int, bytes]:
    """The control message giving one datagram to ``ip`` its TTL (IPv6: its hop limit)."""
    value = ttl.to_bytes(4, sys.byteorder)
    if underlay.version(ip) == 6:
        return (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, value)
    return (socket.IPPROTO_IP, socket.IP_TTL, value)


def _datagram_overhead(sealed: bool) -> int:
    return wire.HEADER_SIZE + (wire.TAG_SIZE if sealed else 0)


class DataPlane:
    def __init__(self, config: Config, router: Router) -> None:
        self.config = config
        self.router = router
        self.local = router.identity.name
        self.switch = Switch(self.local)
        self.paths: dict[int, UdpPath] = {}
        # Per neighbour: sequences count on across reconnects, windows follow the receive key.
        self._sequences: dict[int, Sequences] = {}
        # Where a neighbour's heartbeats really come from, when not its advertised endpoint (a
        # NAT in front of it maps its port elsewhere): its path goes there.
        self._moved: dict[int, tuple[str, int]] = {}
        self._windows: dict[int, wire.ReplayWindow] = {}
        self._links: dict[int, PeerLink] = {}
        # Paths punched through NATs to peers we have no control connection with (punch/), and
        # until we hear from the peer, every endpoint their heartbeats go to and the TTL they
        # leave with (see punch/core.py).
        self._punched: dict[int, PeerLink] = {}
        self._punching: dict[int, tuple[tuple[Endpoint, ...], int | None]] = {}
        self._dirty = trio.Event()
        # The routes of the latest snapshot, and those it replaced until ROUTE_GRACE ends.
        self._routes: Routes | None = None
        self._replaced: tuple[Routes, float] | None = None
        self._netlink = trio.CapacityLimiter(1)
        self.overlay_mtu = 0
        self.forwarder: Forwarder | None = None
        self._sock: socket.socket | None = None
        self._family = socket.AF_INET6  # the sleeve socket's (dual-stack unless IPv6 is off)
        self.counters: dict[str, int] = {}
        self.fastdp = FastDatapath(
            config,
            router,
            bridge=BRIDGE,
            tap=SLEEVE_TAP,
            netlink_limiter=self._netlink,
            on_change=self._fastdp_changed,
            on_answer=self._fastdp_answered,
        )
        self.punch = PunchService(
            router,
            self.switch,
            port=config.port,
            local_ips=frozenset(),  # read with the bridge's setup
            start=self._start_punched,
            stop=self._stop_punched,
        )

    # --- lifecycle -----------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        tap, express_tap = await trio.to_thread.run_sync(self._set_up_bridge, limiter=self._netlink)
        try:
            self._sock, express_sock = open_udp_lanes(self.config.port, rcvbuf=RECEIVE_BUFFER)
            self._family = self._sock.family
        except BaseException as e:
            for lane in (express_tap, tap):
                if lane is not None:
                    lane.close()
            if isinstance(e, OSError):
                raise UserError(
                    f"cannot listen on UDP port {self.config.port}: {e.strerror}"
                ) from None
            raise
        token = trio.lowlevel.current_trio_token()
        self.forwarder = Forwarder(
            tap=tap,
            sock=self._sock,
            express_tap=express_tap,
            express_sock=express_sock,
            switch=self.switch,
            snapshot=self._snapshot(),
            on_control=lambda header, body, addr: token.run_sync_soon(
                self._on_control, header, body, addr
            ),
            on_too_big=lambda peer, size: token.run_sync_soon(self._on_too_big, peer, size),
        )
        self.forwarder.start()
        log.info(
            "data plane up: bridge %s, overlay MTU %d, sleeve on UDP %d",
            BRIDGE,
            self.overlay_mtu,
            self.config.port,
        )
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.fastdp.serve, self.overlay_mtu)
                nursery.start_soon(self._follow_links)
                nursery.start_soon(self._follow_views)
                nursery.start_soon(self._rebuild_snapshots)
                nursery.start_soon(self._drive_paths)
                nursery.start_soon(self._expire_macs)
                nursery.start_soon(self.punch.serve)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.forwarder.stop)
                self._sock.close()
                if express_sock is not None:
                    express_sock.close()
                if express_tap is not None:
                    express_tap.close()
                tap.close()  # a non-persistent TAP disappears; the bridge stays for containers

    @property
    def own_ports(self) -> tuple[str, ...]:
        """The router's own ports on the bridge (isolation keeps every other port but the
        containers' shut)."""
        return (SLEEVE_TAP, *fastdp_core.device_names(self.config.vxlan_port))

    def _set_up_bridge(self) -> tuple[Tap, Tap | None]:
        """Bridge and sleeve TAP (and its express queue, where the kernel allows); the bridge
        outlives us so local containers keep working."""
        own = {BRIDGE, SLEEVE_TAP, *fastdp_core.device_names(self.config.vxlan_port)}
        mtu = overlay_mtu(underlay_mtu(ignore=own), self.config.mtu)
        self.overlay_mtu = mtu
        with netlink.namespace(None) as ns:
            self.punch.core.local_ips = frozenset(ns.addresses())
            if not ns.has_link(BRIDGE):
                ns.create_bridge(BRIDGE, mtu=mtu)
            else:
                ns.set_mtu(BRIDGE, mtu)
            # A bridge without an address of its own takes its ports' lowest MAC, so it changed
            # whenever a port came or went (the TAP at every start): containers' ARP entries for
            # the host's addresses on it (DNS, `expose`) went stale for seconds each time.
            ns.set_mac(BRIDGE, derived_mac(b"meshnet bridge", self.router.identity.name))
            ns.set_up(BRIDGE)
        tap, express = open_tap_lanes(SLEEVE_TAP)
        with netlink.namespace(None) as ns:
            ns.set_mtu(SLEEVE_TAP, mtu)
            ns.set_master(SLEEVE_TAP, BRIDGE)
            # Isolated like the VXLAN port: nothing that arrived one way leaves the other.
            ns.set_bridge_port(SLEEVE_TAP, learning=True, isolated=True)
            ns.set_up(SLEEVE_TAP)
        return tap, express

    # --- forwarding state ----------------------------------------------------------------------

    def _snapshot(self) -> Snapshot:
        """The forwarder's next snapshot; notes when the routes changed (their grace begins)."""
        routes = self.router.views.current.data_routes
        now = trio.current_time()
        if self._routes is not None and routes is not self._routes:
            self._replaced = (self._routes, now + ROUTE_GRACE)
        self._routes = routes
        if self._replaced is not None and now >= self._replaced[1]:
            self._replaced = None
        neighbours = {}
        for peer, link in {**self._punched, **self._links}.items():
            path = self.paths.get(peer)
            ip, port = self._endpoint(peer, link)
            neighbours[peer] = Neighbour(
                name=peer,
                address=(underlay.socket_ip(self._family, ip), port),
                send_key=link.send_key,
                receive_key=link.receive_key,
                sequences=self._sequences.setdefault(peer, Sequences()),
                window=self._windows.setdefault(peer, wire.ReplayWindow()),
                max_datagram=self._usable_payload(path, ip),
                established=bool(path and path.established),
            )
        return Snapshot(
            local=self.local,
            routes=routes,
            recent_routes=self._replaced[0] if self._replaced is not None else None,
            neighbours=neighbours,
            overlay_mtu=self.overlay_mtu,
            fastdp=self.fastdp.up,
            fastdp_passing=self.fastdp.passing(),
            fastdp_macs=frozenset(bytes.fromhex(m.replace(":", "")) for m in self.fastdp.pinned),
        )

    def _link(self, peer: int) -> PeerLink | None:
        """A neighbour's control connection's link, else a punched path's."""
        return self._links.get(peer) or self._punched.get(peer)

    def _start_punched(
        self,
        peer: int,
        candidates: tuple[Endpoint, ...],
        keys: tuple[bytes, bytes] | None,
        ttl: int | None,
    ) -> None:
        """Run a UDP path to ``peer``, punched through NATs: heartbeats go to every candidate
        until one answers (the path then follows the answers), with ``ttl`` if given; the
        first leaves now (it opens our NAT for the peer's); the verdicts go to the punch
        service."""
        send_key, receive_key = keys if keys is not None else (None, None)
        ip, port = candidates[0]
        self._punched[peer] = PeerLink(
            peer, self.router.nick(peer), ip, port, send_key, receive_key
        )
        self._windows[peer] = wire.ReplayWindow()  # a new key: sequences may start anywhere
        self._moved.pop(peer, None)
        self._punching[peer] = (candidates, ttl)
        path = self.paths.get(peer)
        if path is None:
            path = self.paths[peer] = UdpPath(
                max_payload=self._max_payload(ip), heartbeat_interval=1.0, dead_after=5.0
            )
            for action in path.tick(trio.current_time()):
                self._send_control(peer, action)
        self._dirty.set()

    def _stop_punched(self, peer: int) -> None:
        self._punching.pop(peer, None)
        if self._punched.pop(peer, None) is None:
            return
        if peer not in self._links:
            self.paths.pop(peer, None)
            self._windows.pop(peer, None)
            self._moved.pop(peer, None)
        self._dirty.set()

    def _endpoint(self, peer: int, link: PeerLink) -> tuple[str, int]:
        """The UDP endpoint the path to ``peer`` uses: where its heartbeats come from, once
        they came from elsewhere than its control connection's address and advertised port."""
        return self._moved.get(peer) or (underlay.plain_ip(link.ip), link.port)

    def _follow_heartbeats(self, peer: int, link: PeerLink, addr: Any) -> None:
        """A heartbeat came from ``addr``: if that is not where the path goes, the neighbour's
        NAT maps it there now, and the path follows (heartbeats every second keep that
        mapping alive, well inside a NAT's usual 30 s UDP timeout). With a password the
        heartbeat was authenticated; without one only its port may differ (the receive thread
        passes nothing else)."""
        endpoint = (underlay.plain_ip(str(addr[0])), int(addr[1]))
        if endpoint == self._endpoint(peer, link):
            return
        if link.receive_key is None and endpoint[0] != underlay.plain_ip(link.ip):
            self._count("heartbeat_from_another_host")
            return
        log.info(
            "UDP path to %s follows its heartbeats to %s:%d (NAT)",
            self.router.nick(peer),
            *endpoint,
        )
        self._count("udp_endpoint_moved")
        if endpoint == (underlay.plain_ip(link.ip), link.port):
            self._moved.pop(peer, None)
        else:
            self._moved[peer] = endpoint
        self._dirty.set()

    async def _follow_links(self) -> None:
        """Paths follow the router's live links (published only when one comes, goes or
        changes)."""
        async for live in self.router.links.subscribe():
            self._reconcile_links(live.links)
            self._dirty.set()

    async def _follow_views(self) -> None:
        """Routes and known peers (published only after a recalculation changed them)."""
        async for view in self.router.views.subscribe():
            for gone in self.switch.peers() - view.peers:
                self.switch.forget_peer(gone)
            self._dirty.set()

    async def _rebuild_snapshots(self) -> None:
        """Swap in a new snapshot after changes (links, routes, path states), coalesced, and
        when the replaced routes' grace ends."""
        assert self.forwarder is not None
        while True:
            with trio.move_on_at(self._replaced[1] if self._replaced else math.inf):
                await self._dirty.wait()
            if self._dirty.is_set():  # (replacing an unset one would strand _drive_paths)
                self._dirty = trio.Event()
            self.forwarder.update(self._snapshot())
            self._count("snapshots")
            await trio.sleep(0.01)  # let a burst of changes coalesce

    def _reconcile_links(self, links: Mapping[int, PeerLink]) -> None:
        """Paths follow neighbours; a replaced connection keeps its path but is told its state.

        Sequence numbers keep counting for as long as the neighbour stays (a new key never sees
        an old nonce); a new receive key gets a fresh replay window, since the sender's
        sequences for it may start anywhere.
        """
        for peer in list(self._links):
            if peer not in links:
                del self._links[peer]
                if peer in self._punched:
                    continue  # its punched path goes on (the punch service decides)
                self.paths.pop(peer, None)
                self._sequences.pop(peer, None)
                self._windows.pop(peer, None)
                self._moved.pop(peer, None)
        for peer, link in links.items():
            old = self._links.get(peer)
            if old is link:
                continue
            self._links[peer] = link
            moved = self._moved.get(peer)
            if moved is not None and moved[0] != underlay.plain_ip(link.ip):
                del self._moved[peer]  # a new connection from elsewhere: start from its address
            if old is None or old.receive_key != link.receive_key:
                self._windows[peer] = wire.ReplayWindow()
            path = self.paths.get(peer)
            if path is None:
                self.paths[peer] = UdpPath(
                    max_payload=self._max_payload(link.ip), heartbeat_interval=1.0, dead_after=5.0
                )
            else:  # the router's new connection must learn what we already know
                self.router.report_path(self._verdict(peer, path))

    def _fastdp_changed(self) -> None:
        """Neighbours joined or left fastdp: the sleeve's snapshot must follow at once."""
        if self.forwarder is not None:
            self.forwarder.update(self._snapshot())
        for peer, path in self.paths.items():
            self.router.report_path(self._verdict(peer, path))
        self._dirty.set()  # a path no longer vouched for heartbeats at once (_drive_paths)

    def _fastdp_answered(self, peer: int) -> None:
        """fastdp's probe to ``peer`` was answered: its UDP path is alive too (see UdpPath)."""
        path = self.paths.get(peer)
        if path is not None and self._vouched(peer):
            before = (path.state, path.payload_mtu)
            path.vouch(trio.current_time())
            self._report(peer, path, before)

    def _vouched(self, peer: int) -> bool:
        """Whether fastdp's probes prove the UDP path to ``peer``: they cross the same underlay
        to the same address (not a NAT's mapping, nor a punched path)."""
        return peer in self.fastdp.up and peer in self._links and peer not in self._moved

    def _usable_payload(self, path: UdpPath | None, ip: str) -> int:
        """What the forwarder may send: the discovered path MTU once known.

        While the first search runs, assume the local link's MTU: answering "too big" with the
        search's safe minimum would make containers cache a tiny path MTU for ten minutes.
        """
        if path is None:
            return 0
        if path.searching and path.payload_mtu <= MIN_PROBE_PAYLOAD:
            return self._max_payload(ip)
        return path.payload_mtu

    def _max_payload(self, ip: str) -> int:
        """The largest UDP payload toward ``ip`` on the local link (IPv6 headers take 20 bytes
        more than IPv4's: the overlay MTU leaves room for them either way)."""
        return self.overlay_mtu + ENCAPSULATION_OVERHEAD - underlay.udp_headers(ip)

    async def _drive_paths(self) -> None:
        """Heartbeats and probes for every neighbour; report path changes to the router."""
        while True:
            now = trio.current_time()
            wake = now + 60.0
            for peer, path in list(self.paths.items()):
                before = (path.state, path.payload_mtu)
                path.relax(self._vouched(peer))
                for action in path.tick(now):
                    self._send_control(peer, action)
                wake = min(wake, path.next_wake())
                self._report(peer, path, before)
            with trio.move_on_at(max(wake, now + 0.05)):
                await self._dirty.wait()
                await trio.sleep(0.05)

    def _report(self, peer: int, path: UdpPath, before: tuple[PathState, int]) -> None:
        """Tell the router (and status) when a path's state or MTU changed."""
        if (path.state, path.payload_mtu) == before:
            return
        nickname = self.router.nick(peer)
        if path.state != before[0]:
            log.info("UDP path to %s %s (PMTU %d)", nickname, path.state.value, path.payload_mtu)
        link = self._punched.get(peer)
        if link is not None and peer not in self._links:
            self.punch.path_changed(peer, path.established, self._endpoint(peer, link))
        else:
            self.router.report_path(self._verdict(peer, path))
        self._dirty.set()

    def _verdict(self, peer: int, path: UdpPath) -> PathVerdict:
        return PathVerdict(peer, path.established, self._path_info(peer, path))

    def _path_info(self, peer: int, path: UdpPath) -> dict[str, Any]:
        link = self._link(peer)
        endpoint = self._endpoint(peer, link) if link is not None else None
        return {
            "state": path.state.value,
            "endpoint": underlay.endpoint_text(*endpoint) if endpoint else None,
            "nat_moved": peer in self._moved,
            "punched": peer not in self._links,
            "pmtu": path.payload_mtu,
            "rtt_ms": round(path.rtt * 1000, 3) if path.rtt is not None else None,
            **self.fastdp.peer_info(peer),
        }

    def _send_control(self, peer: int, action: SendHeartbeat | SendProbe) -> None:
        link = self._link(peer)
        if link is None or self._sock is None:
            return
        if isinstance(action, SendHeartbeat):
            kind, body = (
                wire.Kind.HEARTBEAT,
                wire.encode_heartbeat(action.timestamp_us, action.echo_us, action.hear_you),
            )
        else:
            # Sizes in UdpPath are whole UDP payloads: the probe's body fills what the header
            # and tag leave.
            kind, body = (
                wire.Kind.PROBE,
                wire.encode_probe(
                    action.probe_id, action.size - _datagram_overhead(link.send_key is not None)
                ),
            )
        self._send(link, kind, body, peer)

    def _send(self, link: PeerLink, kind: wire.Kind, body: bytes, peer: int) -> None:
        assert self._sock is not None
        header = wire.DatagramHeader(
            kind=kind,
            flags=0,
            ttl=1,
            origin=self.local,
            destination=peer,
            hop=self.local,
            sequence=self._sequences.setdefault(peer, Sequences()).take(),
        )
        data = wire.encode_datagram(header, body, link.send_key)
        punching = self._punching.get(peer)
        try:
            if punching is None:
                ip, port = self._endpoint(peer, link)
                self._sock.sendto(data, (underlay.socket_ip(self._family, ip), port))
            else:
                candidates, ttl = punching
                for ip, port in candidates:
                    ancillary = [_ttl_message(ip, ttl)] if ttl is not None else []
                    self._sock.sendmsg(
                        [data], ancillary, 0, (underlay.socket_ip(self._family, ip), port)
                    )
        except OSError as e:
            if e.errno == errno.EMSGSIZE and kind == wire.Kind.PROBE:
                path = self.paths.get(peer)
                if path is not None:
                    path.on_send_error_too_big(trio.current_time(), len(data))
            self._count(f"control_send_{errno.errorcode.get(e.errno or 0, 'error').lower()}")

    def _on_control(self, header: wire.DatagramHeader, body: bytes, addr: Any) -> None:
        """A heartbeat or probe the receive thread authenticated; runs in trio."""
        peer = header.hop
        path = self.paths.get(peer)
        link = self._link(peer)
        if path is None or link is None:
            self._count("control_from_stranger")
            return
        now = trio.current_time()
        before = (path.state, path.payload_mtu)
        if header.kind == wire.Kind.HEARTBEAT:
            self._follow_heartbeats(peer, link, addr)
            if peer in self._links:  # tell it where it is seen from (its reflexive address)
                self.punch.heard(peer, (underlay.plain_ip(str(addr[0])), int(addr[1])))
            else:  # a punched path: both NATs are open, heartbeats go where these come from
                self._punching.pop(peer, None)
        try:
            if header.kind == wire.Kind.HEARTBEAT:
                ts, echo, hears = wire.decode_heartbeat(body)
                path.on_heartbeat(now, ts, echo, hears)
            elif header.kind == wire.Kind.PROBE:
                probe_id = wire.decode_probe(body)
                size = len(body) + _datagram_overhead(header.sealed)
                self._send(link, wire.Kind.PROBE_ACK, wire.encode_probe_ack(probe_id, size), peer)
            elif header.kind == wire.Kind.PROBE_ACK:
                probe_id, size = wire.decode_probe_ack(body)
                path.on_probe_ack(now, probe_id, size)
        except wire.DatagramError:
            self._count("control_malformed")
            return
        self._report(peer, path, before)

    def _on_too_big(self, peer: int, size: int) -> None:
        path = self.paths.get(peer)
        if path is not None:
            before = (path.state, path.payload_mtu)
            path.on_send_error_too_big(trio.current_time(), size)
            self._report(peer, path, before)

    async def _expire_macs(self) -> None:
        while True:
            await trio.sleep(30)
            self.switch.expire(time.monotonic())  # the forwarder's clock, not trio's

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    # --- containers ----------------------------------------------------------------------------

    async def attach(self, container: str, addresses: list[str], ifname: str) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            ref = attachment.resolve_namespace(container)
            result = attachment.attach(
                ref,
                bridge=BRIDGE,
                ifname=ifname,
                addresses=addresses,
                mtu=self.overlay_mtu,
                gso_max_segs=segments_per_send(self.overlay_mtu),
            )
            return asdict(result)

        result = await trio.to_thread.run_sync(run, limiter=self._netlink)
        log.info("attached %s (%s) %s", container, result["mac"], ", ".join(addresses))
        return result

    async def announce(self, container: str, attached: dict[str, Any]) -> None:
        """A gratuitous ARP from the attached container for its IPv4 addresses (best effort).

        Separate from `attach`: the isolation rules drop what a port sends until they know it,
        so the node announces once its isolation step is done.
        """

        def run() -> None:
            try:
                ref = attachment.resolve_namespace(container)
            except UserError:
                return  # gone already: nobody to announce
            attachment.announce(ref, attached["ifname"], attached["mac"], attached["addresses"])

        await trio.to_thread.run_sync(run, limiter=self._netlink)

    async def namespace_id(self, container: str) -> NamespaceId:
        """A container's namespace for good, however it was named (IPAM's key is made of it)."""

        def run() -> NamespaceId:
            ref = attachment.resolve_namespace(container)
            return NamespaceId(namespaces.cookie_of(ref.path), self.boot)

        return await trio.to_thread.run_sync(run)

    @functools.cached_property
    def boot(self) -> str:
        return namespaces.boot_id()

    async def namespaces(self, *, interfaces: bool = False) -> Namespaces:
        """Every namespace in sight now, and whether each container port of the bridge leads
        to one of them; with ``interfaces``, each one's attached interfaces too."""

        def run() -> Namespaces:
            visible = namespaces.visible_namespaces()
            ports = attachment.bridge_namespaces(BRIDGE, interfaces=interfaces)
            seen = tuple(
                SeenNamespace(
                    NamespaceId(v.cookie, self.boot), v.inode, ports.interfaces.get(v.inode, {})
                )
                for v in visible
            )
            # A port whose namespace was found by its file but not among the cookies (it
            # came, or the file was replaced, between the two looks) counts as unseen too.
            missing = ports.inodes - {v.inode for v in visible}
            unseen = ports.unseen + tuple(f"(namespace {d}:{i})" for d, i in sorted(missing))
            return Namespaces(seen, self.boot, unseen)

        return await trio.to_thread.run_sync(run, limiter=self._netlink)

    async def detach(self, container: str, addresses: list[str], ifname: str) -> bool:
        def run() -> bool:
            ref = attachment.resolve_namespace(container)
            return attachment.detach(ref, ifname=ifname, addresses=addresses or None)

        removed = await trio.to_thread.run_sync(run, limiter=self._netlink)
        if removed:
            log.info("detached %s %s", container, ", ".join(addresses) or "(all)")
        return removed

    async def containers(self) -> list[dict[str, Any]]:
        found = await trio.to_thread.run_sync(
            lambda: attachment.list_attachments(bridge=BRIDGE), limiter=self._netlink
        )
        return [asdict(a) for a in found]

    async def refresh(self) -> None:
        """Read what only the kernel counts (fastdp's VXLAN source filter), for `status`."""
        await self.fastdp.refresh()

    def status(self) -> dict[str, Any]:
        assert self.forwarder is not None
        stats = self.forwarder.statistics()
        return {
            "bridge": BRIDGE,
            "overlay_mtu": self.overlay_mtu,
            "port": self.config.port,
            "paths": {
                format_peer_name(peer): {
                    "nickname": self.router.nick(peer),
                    **self._path_info(peer, p),
                }
                for peer, p in self.paths.items()
            },
            "forwarding": stats,
            "switch": asdict(self.switch.statistics()),
            "macs": [
                {"mac": e.mac, "peer": format_peer_name(e.peer), "age": round(e.age, 1)}
                for e in self.switch.entries()
            ],
            "counters": dict(self.counters),
            "fastdp": self.fastdp.status(),
            "punch": self.punch.status(),
        }
