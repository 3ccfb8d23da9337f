"""The fast datapath's trio shell: the VXLAN device, probes, advertisements, FDB programming.

Decisions live in ``core.py``; this shell feeds it (neighbours from the router, the bridge's
learned MACs, probe answers from an AF_PACKET socket on the bridge, neighbours' advertisements
from the ``fastdp`` gossip channel) and makes the kernel match what it wants. The data plane
reads `up` (the neighbours the sleeve must skip) through the `on_change` callback, which is called
between removing entries and adding them: a neighbour leaving fastdp loses its VXLAN entries
before the sleeve takes it back, one joining leaves the sleeve before VXLAN carries it, so no
frame is ever sent both ways.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any

import trio

from meshnet.config import Config
from meshnet.dataplane.fastdp import core as fastdp
from meshnet.dataplane.fastdp.core import (
    Advertisement,
    Candidate,
    KernelEntries,
    PeerProbe,
    Probe,
    ProbeKind,
)
from meshnet.dataplane.kernel import netlink, vxlan_filter
from meshnet.dataplane.kernel.nft import NftError
from meshnet.errors import RemoteProtocolError
from meshnet.gossip.channel import UnicastChannel
from meshnet.gossip.events import NO_LINKS, LiveLinks, PeerLink
from meshnet.gossip.identity import format_peer_name
from meshnet.gossip.router import Router

log = logging.getLogger("meshnet.fastdp")

# The bridge's learned MACs are read again when the kernel reports a forwarding-table change
# (after MAC_SETTLE, so that a burst becomes one read), and every RESCAN_INTERVAL as a safety
# net (a lost notification is reported, as ENOBUFS, and read again at once); every
# SCAN_INTERVAL where notifications cannot be had.
SCAN_INTERVAL = 1.0
RESCAN_INTERVAL = 300.0
MAC_SETTLE = 0.05
READVERTISE_INTERVAL = 30.0
_PACKET_OUTGOING = 4  # sll_pkttype of our own transmissions, which packet sockets also see
# Not delivering them at all (Linux 4.20): each of our probes and answers would otherwise wake
# the daemon once more, only to be dropped.
_SOL_PACKET = 263
_PACKET_IGNORE_OUTGOING = 23


class FastDatapath(UnicastChannel):
    def __init__(
        self,
        config: Config,
        router: Router,
        *,
        bridge: str,
        tap: str,
        netlink_limiter: trio.CapacityLimiter,
        on_change: Callable[[], None],
        on_answer: Callable[[int], None] = lambda peer: None,
    ) -> None:
        self.config = config
        self.router = router
        self.local = router.identity.name
        self.bridge = bridge
        self.tap = tap
        self._limiter = netlink_limiter
        self._on_change = on_change
        self._on_answer = on_answer  # a neighbour answered a probe (it vouches for the sleeve)
        self._probe_mac = fastdp.probe_mac(self.local)
        self.port = config.vxlan_port  # every neighbour's must be the same (advertised)
        self.device = fastdp.device_name(self.port)
        # Per IP version of the underlay, the device carrying those neighbours (see core's "Two
        # families"); a version missing here (no IPv6 on the host) leaves its peers on the sleeve.
        self.devices: dict[int, str] = {}
        self.unavailable = "" if config.fastdp else "turned off (--no-fastdp)"
        self._ads: dict[int, Advertisement] = {}
        self._sent_ads: dict[int, Advertisement] = {}
        self._owners = fastdp.MacOwners()
        self._probes: dict[int, PeerProbe] = {}
        self._local_macs: frozenset[str] = frozenset()
        self._installed = KernelEntries(frozenset(), frozenset())
        self.up: frozenset[int] = frozenset()
        self.pinned: frozenset[str] = frozenset()  # MACs the bridge sends to VXLAN (see _publish)
        self._frame_size = 0
        # A plain non-blocking socket: probes are sent without a trip through the scheduler,
        # and read in batches after one readiness wait (each costs an idle router a wake-up).
        self._sock: socket.socket | None = None
        self._sees_outgoing = True  # no PACKET_IGNORE_OUTGOING: read each frame's type
        self._dirty = trio.Event()
        self._live: LiveLinks = NO_LINKS  # the router's, as last published
        # Derived from the links and the advertisements; None after either changed.
        self._candidate_cache: dict[int, str] | None = None
        self._probe_macs: dict[int, str] = {}
        self.counters: dict[str, int] = {}
        # The source filter's allowed addresses as installed (None: no filter table), and its
        # drop counter as last read (``refresh``).
        self._allowed: frozenset[str] | None = None
        self.foreign_dropped: int | None = None
        router.register_channel(fastdp.CHANNEL, self)

    # --- lifecycle -----------------------------------------------------------------------------

    async def serve(
        self, overlay_mtu: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Runs until cancelled; without fastdp it only makes sure no VXLAN device is left.

        The source filter comes first and goes last: the device never takes datagrams without
        it. A filter that cannot be installed means no device (fail closed, the sleeve).
        """
        await self._run_netlink(self._remove_device)
        await self._remove_filter()
        if not self.unavailable and self.router.encrypted and not self.config.trusted_subnets:
            # No neighbour could ever be willing (VXLAN carries frames in the clear): a device
            # would only be a door on the underlay.
            self.unavailable = "off: encrypted, no --trusted-subnets (VXLAN is not encrypted)"
        if self.unavailable:
            task_status.started()
            return
        try:
            await trio.to_thread.run_sync(vxlan_filter.apply, vxlan_filter.table(self.port))
        except NftError as e:
            self.unavailable = f"off: no VXLAN source filter ({e})"
            log.error(
                "fast datapath off: the filter that admits VXLAN only from peers could not be "
                "installed (%s); every peer uses the sleeve",
                e,
            )
            await self._remove_filter()
            task_status.started()
            return
        self._allowed = frozenset()
        try:
            await self._run_netlink(self._create_device, overlay_mtu)
            self._sock = socket.socket(
                socket.AF_PACKET, socket.SOCK_RAW, socket.htons(fastdp.ETHERTYPE)
            )
            self._sock.setblocking(False)
            self._sock.bind((self.bridge, 0))
            with contextlib.suppress(OSError):  # an older kernel: they arrive, dropped below
                self._sock.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
                self._sees_outgoing = False
        except (netlink.NetlinkError, OSError) as e:
            self.unavailable = f"unavailable: {e}"
            log.warning("fast datapath %s; every peer uses the sleeve", self.unavailable)
            await self._run_netlink(self._remove_device)
            await self._remove_filter()
            task_status.started()
            return
        self._frame_size = overlay_mtu + 14
        log.info("fast datapath up: %s on UDP %d", ", ".join(self.devices.values()), self.port)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow_router)
                nursery.start_soon(self._receive_probes)
                nursery.start_soon(self._watch_local_macs)
                nursery.start_soon(self._drive)
                task_status.started()
        finally:
            self._sock.close()
            with trio.CancelScope(shield=True):
                await self._run_netlink(self._remove_device)
                await self._remove_filter()

    async def _remove_filter(self) -> None:
        """Gone with the device (the device first): a stale table only drops datagrams."""
        installed, self._allowed = self._allowed is not None, None
        try:
            await trio.to_thread.run_sync(vxlan_filter.apply, vxlan_filter.removal())
        except NftError as e:
            if installed:  # otherwise nft is missing or broken: there is no table of ours
                log.warning("fast datapath: VXLAN source filter left in place: %s", e)

    async def refresh(self) -> None:
        """Read the filter's drop counter (a subprocess: on request, for status and metrics)."""
        if self._allowed is not None:
            self.foreign_dropped = await trio.to_thread.run_sync(vxlan_filter.dropped)

    async def _run_netlink(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _create_device(self, mtu: int) -> None:
        """Both devices; the IPv6 one only where the host has IPv6 (the IPv4 one must work)."""
        with netlink.namespace(None) as ns:
            for version, name in zip((4, 6), fastdp.device_names(self.port), strict=True):
                try:
                    ns.create_vxlan(name, vni=fastdp.VNI, port=self.port, mtu=mtu, version=version)
                except netlink.NetlinkError as e:
                    if version == 4:
                        raise
                    log.warning("fast datapath: no %s (%s): IPv6 peers use the sleeve", name, e)
                    continue
                ns.set_master(name, self.bridge)
                ns.set_bridge_port(name, learning=False, isolated=True)
                ns.set_up(name)
                self.devices[version] = name
            ns.add_local_mac(self.bridge, self._probe_mac)

    def _remove_device(self) -> None:
        """Fresh devices on every start: no entry survives from an earlier daemon."""
        self.devices = {}
        with netlink.namespace(None) as ns:
            for name in fastdp.device_names(self.port):
                ns.delete_link(name)
            if ns.has_link(self.bridge):
                ns.remove_local_mac(self.bridge, self._probe_mac)

    def _device_for(self, address: str) -> str | None:
        """The device that sends to ``address`` (None: none of its family here)."""
        return self.devices.get(6 if ":" in address else 4)

    @property
    def _links(self) -> Mapping[int, PeerLink]:
        return self._live.links

    async def _follow_router(self) -> None:
        """Links decide the candidates; routes decide whether an advertisement can be sent (a
        neighbour is routable only once its path is proven). Both are published only on a
        real change, so an idle mesh leaves `_drive` to its own timers."""

        async def links() -> None:
            async for live in self.router.links.subscribe():
                self._live = live
                self._candidate_cache = None
                self._dirty.set()

        async def views() -> None:
            version = self.router.views.version
            while True:
                version, _ = await self.router.views.wait_newer(version)
                self._dirty.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(links)
            nursery.start_soon(views)

    # --- the gossip channel: neighbours' advertisements (unicasts) ------------------------------

    def on_broadcast(self, source: int, payload: bytes) -> None:
        self._count("unexpected_broadcast")

    def on_unicast(self, source: int, payload: bytes) -> None:
        try:
            ad = fastdp.decode_advertisement(payload)
        except RemoteProtocolError as e:
            self._count("bad_advertisement")
            log.warning("ignoring a fastdp advertisement from %s: %s", self.router.nick(source), e)
            return
        self._ads[source] = ad
        self._owners.update(source, ad.macs)
        self._candidate_cache = None
        self._dirty.set()

    def _willing(self, address: str) -> bool:
        return fastdp.willing(
            enabled=not self.unavailable,
            encrypted=self.router.encrypted,
            address=address,
            trusted=self.config.trusted_subnets,
        )

    def _advertise(self, refresh: bool) -> bool:
        """Tell each neighbour what changed for it (everything, every READVERTISE_INTERVAL).

        False if one could not be sent (no route to the neighbour yet): try again soon.
        """
        sent_all = True
        links = self._links
        for peer in set(self._sent_ads) - set(links):
            del self._sent_ads[peer]  # a returning neighbour hears from us again
        for peer, link in links.items():
            ad = Advertisement(self._willing(link.ip), self._local_macs, self.port)
            if not refresh and self._sent_ads.get(peer) == ad:
                continue
            if self.router.unicast(fastdp.CHANNEL, peer, fastdp.encode_advertisement(ad)):
                self._sent_ads[peer] = ad
            else:
                sent_all = False
        return sent_all

    # --- probing and programming ---------------------------------------------------------------

    def _candidates(self) -> dict[int, str]:
        """Neighbours both sides want fastdp with, and their underlay addresses (asked for
        every probe received: cached until the links or an advertisement change)."""
        if self._candidate_cache is None:
            found = {}
            for peer, link in self._links.items():
                ad = self._ads.get(peer)
                if (
                    ad is not None
                    and ad.willing
                    and ad.port == self.port
                    and self._willing(link.ip)
                    and self._device_for(link.ip) is not None
                ):
                    found[peer] = link.ip
            self._candidate_cache = found
        return self._candidate_cache

    async def _drive(self) -> None:
        """Advertise and program after a change; probe on the probes' own schedule.

        A wake-up for a probe alone (on the probes' beat: all neighbours' at once) only sends
        it: advertising and programming follow changes (links, advertisements, local MACs, a
        probe's state), and the periodic re-advertisement.
        """
        refresh_at = 0.0
        changed = True
        while True:
            now = trio.current_time()
            refresh = now >= refresh_at
            if refresh:
                refresh_at = now + READVERTISE_INTERVAL
            retry = False
            if changed or refresh:
                retry = not self._advertise(refresh)
            candidates = self._candidates()
            for peer in set(self._probes) - set(candidates):
                del self._probes[peer]
                changed = True
            wake = refresh_at
            self._read_pending()  # answers that came while we did not run count first
            for peer in candidates:
                probe = self._probes.get(peer)
                if probe is None:
                    probe = self._probes[peer] = PeerProbe(started=now)
                    changed = True
                state = probe.state
                probe_id = probe.tick(now)
                changed = changed or probe.state is not state
                if probe_id is not None:
                    self._send_probe(self._probe_for(peer, probe, probe_id, now), peer)
                wake = min(wake, probe.next_wake())
            if changed:
                retry = not await self._program(candidates) or retry
            with trio.move_on_at(max(wake, now + 0.05)):
                await self._dirty.wait()
            changed = self._dirty.is_set() or retry
            self._dirty = trio.Event()

    async def _program(self, addresses: dict[int, str]) -> bool:
        """Make the kernel hold what the candidates need; False if it refused (retry)."""
        candidates = {
            peer: Candidate(address, self._probes[peer].state is fastdp.FastState.UP)
            for peer, address in addresses.items()
        }
        want = fastdp.kernel_entries(candidates, self._owners, self._local_macs)
        have = self._installed
        up = frozenset(peer for peer, c in candidates.items() if c.up)
        if want == have and up == self.up:
            return True
        for peer in up - self.up:
            log.info("fast datapath to %s up", self.router.nick(peer))
        for peer in self.up - up:
            log.info(
                "fast datapath to %s down: the sleeve carries its traffic", self.router.nick(peer)
            )

        devices = self.devices
        have_pins, want_pins = fastdp.pins(have), fastdp.pins(want)

        def remove() -> None:
            with netlink.namespace(None) as ns:
                for mac, version in have_pins - want_pins:
                    ns.unpin_mac(devices[version], mac)
                for mac, ip in have.remotes - want.remotes:
                    ns.delete_remote(devices[6 if ":" in ip else 4], mac, ip)

        def add() -> None:
            with netlink.namespace(None) as ns:
                for mac, ip in want.remotes - have.remotes:
                    ns.add_remote(devices[6 if ":" in ip else 4], mac, ip)
                for mac, version in want_pins - have_pins:
                    ns.pin_mac(devices[version], mac)

        try:
            await self._filter(vxlan_filter.sources(ip for _, ip in want.remotes))
        except NftError as e:
            self._count("filter_failed")
            log.warning("fast datapath: VXLAN source filter: %s (retrying)", e)
            return False
        try:
            self._publish(have.pinned & want.pinned, self.up)  # the sleeve first, then the kernel
            await self._run_netlink(remove)
            self._installed = KernelEntries(have.remotes & want.remotes, have.pinned & want.pinned)
            # A neighbour that came up is skipped by the sleeve's floods only once the kernel
            # holds its flood entry: told before, a broadcast (an ARP) in between went nowhere.
            self._publish(self.pinned, self.up & up)
            await self._run_netlink(add)
            self._installed = want
            self._publish(want.pinned, up)  # the kernel first, then the sleeve
        except netlink.NetlinkError as e:
            self._count("program_failed")
            log.warning("fast datapath: %s (retrying)", e)
            return False
        return True

    async def _filter(self, want: frozenset[str]) -> None:
        """Admit VXLAN from exactly `want`, before the FDB sends anything there.

        Every address the FDB sends to is admitted first, so probes can be answered; one no
        longer wanted is dropped at once (its peer, no longer a candidate, gets the sleeve).
        """
        have = self._allowed if self._allowed is not None else frozenset()
        if want == have:
            return
        await trio.to_thread.run_sync(vxlan_filter.apply, vxlan_filter.changes(have, want))
        self._allowed = want

    def _publish(self, pinned: frozenset[str], up: frozenset[int]) -> None:
        """Tell the sleeve which neighbours and MACs the VXLAN port carries.

        ``pinned`` is never more than the kernel holds: a frame for a pinned MAC can reach the
        sleeve's TAP only in a flood that VXLAN also carried, so the sleeve drops it; any other
        unicast frame at the TAP was sent there alone (the bridge learned its MAC on the TAP
        while the sleeve carried that MAC's traffic) and the sleeve must deliver it.
        """
        if pinned == self.pinned and up == self.up:
            return
        self.pinned, self.up = pinned, up
        self._on_change()

    def passing(self) -> frozenset[int]:
        """The neighbours on fastdp that relay a PASSING broadcast on (see the sleeve's
        ``forwarding``): all of them but routers from before PASSING."""
        return frozenset(p for p in self.up if (ad := self._ads.get(p)) is not None and ad.passing)

    def _probe_for(self, peer: int, tracker: PeerProbe, probe_id: int, now: float) -> Probe:
        """An ECHO, answering its latest probe as it goes, for a neighbour that understands
        them; a PROBE for one from before them."""
        ad = self._ads.get(peer)
        if ad is None or not ad.echo:
            return Probe(ProbeKind.PROBE, self.local, probe_id)
        echo_id, held_us = tracker.echo(now)
        return Probe(ProbeKind.ECHO, self.local, probe_id, echo_id, held_us)

    def _probe_mac_of(self, peer: int) -> str:
        mac = self._probe_macs.get(peer)
        if mac is None:
            if len(self._probe_macs) > 4096:  # bounded: names come from the network
                self._probe_macs.clear()
            mac = self._probe_macs[peer] = fastdp.probe_mac(peer)
        return mac

    def _send_probe(self, probe: Probe, peer: int) -> None:
        assert self._sock is not None
        frame = fastdp.encode_probe(
            probe,
            source=self._probe_mac,
            destination=self._probe_mac_of(peer),
            size=self._frame_size,
        )
        try:
            self._sock.send(frame)
        except OSError as e:
            self._count(f"probe_send_{errno.errorcode.get(e.errno or 0, 'error').lower()}")
            return
        self._count("probes_sent" if probe.kind is ProbeKind.PROBE else "acks_sent")

    async def _receive_probes(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            await trio.lowlevel.wait_readable(sock)
            self._read_pending()

    def _read_pending(self) -> None:
        """Handle the probes the socket holds now. The beat reads them too before it judges
        anyone silent: on a starved host (a hundred routers on 2 cores) the beat's deadline and
        the socket's readiness come due together, and an answer waiting unread must not count
        as missing (each false "down" moved a path and its routes, news for the whole mesh)."""
        if self._sock is not None:
            for frame in self._pending_frames(self._sock):
                self._on_frame(frame)

    def _pending_frames(self, sock: socket.socket) -> list[bytes]:
        """What the socket holds now (bounded: the rest waits for the next round)."""
        frames = []
        with contextlib.suppress(BlockingIOError):
            for _ in range(64):
                if not self._sees_outgoing:
                    frames.append(sock.recv(65536))  # recvfrom names the device: an ioctl
                    continue
                frame, address = sock.recvfrom(65536)
                if address[2] != _PACKET_OUTGOING:
                    frames.append(frame)
        return frames

    def _on_frame(self, frame: bytes) -> None:
        if not fastdp.is_probe(frame):
            return  # a container's frame of the same ethertype: not ours to read
        try:
            destination, probe = fastdp.decode_probe(frame)
        except RemoteProtocolError:
            self._count("probes_malformed")
            return
        if destination != self._probe_mac:
            self._count("probes_misaddressed")
            return
        if probe.kind is ProbeKind.ECHO:
            self._on_echo(probe)
        elif probe.kind is ProbeKind.PROBE:
            if probe.sender in self._candidates():
                self._send_probe(Probe(ProbeKind.ACK, self.local, probe.probe_id), probe.sender)
            else:
                self._count("probes_from_stranger")
        else:
            tracker = self._probes.get(probe.sender)
            if tracker is None:
                return
            now = trio.current_time()
            if tracker.on_ack(now, probe.probe_id):
                self._dirty.set()
            if tracker.last_answer == now:
                self._on_answer(probe.sender)

    def _on_echo(self, probe: Probe) -> None:
        tracker = self._probes.get(probe.sender)
        if tracker is None:
            self._count("probes_from_stranger")
            return
        now = trio.current_time()
        changed, answer = tracker.on_echo(now, probe.probe_id, probe.echo_id, probe.held_us)
        if changed:
            self._dirty.set()
        if tracker.last_answer == now:
            self._on_answer(probe.sender)
        if answer:  # we are not up: no waiting for our beat
            reply = self._probe_for(probe.sender, tracker, tracker.answer_now(now), now)
            self._send_probe(reply, probe.sender)

    async def _watch_local_macs(self) -> None:
        """The MACs behind our bridge (its own and what it learned on container ports)."""

        def scan() -> tuple[frozenset[str], frozenset[int]]:
            """The MACs, and the ports whose entries are not ours (their changes are news only
            to the mesh: the VXLAN devices we program, the TAP learning remote MACs)."""
            with netlink.namespace(None) as ns:
                theirs = {*self.devices.values(), self.tap}
                learned = ns.learned_macs(self.bridge, exclude=theirs)
                ignored = frozenset(ns.index(name) for name in theirs if ns.has_link(name))
                return frozenset({*learned, ns.link(self.bridge).mac}), ignored

        try:
            monitor: trio.socket.SocketType | None = trio.socket.from_stdlib_socket(
                netlink.open_fdb_monitor()
            )
        except OSError as e:
            monitor = None
            log.warning("fast datapath: no forwarding-table notifications (%s): polling", e)
        try:
            while True:
                try:
                    macs, ignored = await self._run_netlink(scan)
                except netlink.NetlinkError as e:
                    self._count("scan_failed")
                    log.warning("fast datapath: %s", e)
                else:
                    self._count("mac_scans")
                    if macs != self._local_macs:
                        self._local_macs = macs
                        self._dirty.set()
                if monitor is None:
                    await trio.sleep(SCAN_INTERVAL)
                    continue
                with trio.move_on_after(RESCAN_INTERVAL):
                    await _next_fdb_change(monitor, ignored)
                await trio.sleep(MAC_SETTLE)
        finally:
            if monitor is not None:
                monitor.close()

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    # --- what status shows -----------------------------------------------------------------------

    def peer_info(self, peer: int) -> dict[str, Any]:
        """How we send to a neighbour, and why, for status and the TUI."""
        if peer in self.up:
            return {"kind": "fastdp", "fastdp": "up"}
        return {"kind": "sleeve", "fastdp": self._reason(peer)}

    def _reason(self, peer: int) -> str:
        if self.unavailable:
            return self.unavailable
        link = self._links.get(peer)
        if link is not None and not self._willing(link.ip):
            return "off: encrypted (VXLAN would carry frames in the clear)"
        if link is not None and self._device_for(link.ip) is None:
            return "off: no VXLAN device for IPv6 here (the host has no IPv6)"
        ad = self._ads.get(peer)
        if ad is None:
            return "waiting for the peer"
        if not ad.willing:
            return "off at the peer"
        if ad.port != self.port:
            return f"off: the peer's VXLAN port is {ad.port}, ours {self.port} (--fastdp-port)"
        probe = self._probes.get(peer)
        return probe.state.value if probe is not None else "waiting"

    def status(self) -> dict[str, Any]:
        return {
            "enabled": not self.unavailable,
            "reason": self.unavailable or None,
            "device": self.device,
            "devices": list(self.devices.values()),  # IPv4's, then IPv6's (if the host has it)
            "port": self.port,
            "encrypted": self.router.encrypted,
            "trusted_subnets": [str(n) for n in self.config.trusted_subnets],
            "local_macs": len(self._local_macs),
            "peers": {
                format_peer_name(peer): {
                    "nickname": self.router.nick(peer),
                    **self.peer_info(peer),
                    **(vars(p.statistics()) if (p := self._probes.get(peer)) else {}),
                }
                for peer in self._links
            },
            "filter": {
                "table": f"inet {vxlan_filter.TABLE}",
                "installed": self._allowed is not None,
                "allowed": sorted(self._allowed or ()),
                "foreign_dropped": self.foreign_dropped,
            },
            "entries": {
                "remotes": len(self._installed.remotes),
                "pinned": len(self._installed.pinned),
            },
            "counters": dict(self.counters),
        }


async def _next_fdb_change(monitor: trio.socket.SocketType, ignored: frozenset[int]) -> None:
    """Until the kernel reports a change of a bridge's forwarding table on a port not
    ``ignored`` (or lost some reports: a full socket buffer fails the read with ENOBUFS, and
    the caller reads the table again). Measured in a 100-host lab: without ignoring the VXLAN
    and TAP ports, every MAC the mesh learned made every router dump its table (O(N) each)."""
    while True:
        try:
            data = await monitor.recv(65536)
        except OSError:
            return
        if netlink.fdb_changed(data, ignored):
            return
