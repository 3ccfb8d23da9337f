"""The trio shell of hole punching (see ``core``): the ``punch`` gossip channel, the attempts'
timers, and the punched paths it asks the data plane to run.

Its timers also tell the router which peers we exchange traffic with (``Router.want_direct``):
one it can dial gets a control connection, so their traffic goes direct even where
``--discovery-limit`` left them unconnected; one behind a NAT gets an offer to punch.

The data plane tells it what it sees (``heard``: a neighbour's heartbeat and where it came
from; ``path_changed``: a punched path's verdict); it tells the data plane which punched paths
to run (``start``/``stop`` callbacks) and the router which ones to list in the topology.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from meshnet.beats import next_beat
from meshnet.dataplane import underlay
from meshnet.dataplane.punch import core
from meshnet.dataplane.punch.core import Attempt, Endpoint, Offer, Punching, Seen
from meshnet.dataplane.sleeve.switch import Switch
from meshnet.errors import RemoteProtocolError
from meshnet.gossip.channel import UnicastChannel
from meshnet.gossip.router import Router
from meshnet.gossip.throttle import LogThrottle

log = logging.getLogger("meshnet.punch")

#: A peer we sent a unicast frame to this recently exchanges traffic with us: worth a path.
WANT_AGE = 60.0
#: How often the timers run while there is work: attempts going on, or (behind a NAT) peers
#: that may become worth an offer as traffic flows.
TICK = 1.0
#: ... and when there is none: only to notice neighbours that left.
IDLE_TICK = 10.0

StartPath = Callable[
    [int, "tuple[Endpoint, ...]", "tuple[bytes, bytes] | None", "int | None"], None
]


class PunchService(UnicastChannel):
    def __init__(
        self,
        router: Router,
        switch: Switch,
        *,
        port: int,
        local_ips: frozenset[str],
        start: StartPath,
        stop: Callable[[int], None],
    ) -> None:
        self.router = router
        self.switch = switch
        self.core = Punching(
            local=router.identity.name,
            local_port=port,
            encrypted=router.encrypted,
            local_ips=local_ips,
        )
        self._start = start
        self._stop = stop
        self._told: dict[int, Endpoint] = {}  # neighbour -> where we last told it it is
        self._logs = LogThrottle()
        self._work = trio.Event()  # set when there may be work for the timers (see serve)
        router.register_channel(core.CHANNEL, self)

    # --- what the data plane sees

    def heard(self, neighbour: int, endpoint: Endpoint) -> None:
        """A neighbour's heartbeat came from ``endpoint``: tell it when that is news."""
        if self._told.get(neighbour) == endpoint:
            return
        if self.router.unicast(core.CHANNEL, neighbour, core.encode(Seen(endpoint))):
            self._told[neighbour] = endpoint

    def path_changed(self, peer: int, established: bool, endpoint: Endpoint) -> None:
        """A punched path's verdict: listed in our topology entry while it is established."""
        attempt = self.core.attempts.get(peer)
        if attempt is None:
            return
        if established and not attempt.up:
            self.core.established(peer)
            log.info("punched a direct path to %s at %s:%d", self.router.nick(peer), *endpoint)
            self.router.report_punched(peer, underlay.endpoint_text(*endpoint))
        elif not established and attempt.up:
            log.info("the punched path to %s died: relayed again", self.router.nick(peer))
            self._end(peer, "the punched path died (a NAT lost its mapping?)")

    def is_punched(self, peer: int) -> bool:
        attempt = self.core.attempts.get(peer)
        return attempt is not None and attempt.up

    # --- the gossip channel (unicasts only)

    def on_broadcast(self, source: int, payload: bytes) -> None:
        self.core.counters["unexpected_broadcast"] += 1

    def on_unicast(self, source: int, payload: bytes) -> None:
        try:
            message = core.decode(payload)
        except RemoteProtocolError as e:
            self.core.counters["malformed"] += 1
            if self._logs.allow("malformed", trio.current_time()) is not None:
                log.warning("punch message from %s dropped: %s", self.router.nick(source), e)
            return
        now = trio.current_time()
        if isinstance(message, Seen):
            if source in self.router.peer_links():  # only a neighbour sees our heartbeats
                self.core.seen_by(source, message.endpoint)
                self._work.set()  # we may be behind a NAT now
            else:
                self.core.counters["seen_from_stranger"] += 1
        elif not message.answer:
            self._offered(source, message, now)
        else:
            attempt = self.core.on_answer(source, message, now)
            if attempt is not None:
                self._punch(attempt)

    def _offered(self, source: int, offer: Offer, now: float) -> None:
        if source in self.router.peer_links():
            self.core.counters["offer_from_neighbour"] += 1  # its path is direct already
            return
        result = self.core.on_offer(source, offer, now)
        if result is None:
            return
        answer, attempt = result
        if attempt is not None:
            self._punch(attempt)  # first: our NAT must be open before they send
        self.router.unicast(core.CHANNEL, source, core.encode(answer))

    def _punch(self, attempt: Attempt) -> None:
        """Heartbeats to their candidates, at once: our NAT opens for their answers."""
        self._work.set()  # the attempt's timers
        log.info(
            "punching a path to %s at %s",
            self.router.nick(attempt.peer),
            ", ".join(f"{ip}:{port}" for ip, port in attempt.theirs),
        )
        self._start(attempt.peer, attempt.theirs, attempt.keys, attempt.ttl)

    def _end(self, peer: int, reason: str) -> None:
        was_up = self.is_punched(peer)
        self.core.failed(peer, trio.current_time(), reason)
        self._stop(peer)
        if was_up:
            self.router.report_punched(peer, None)

    # --- timers

    async def serve(self) -> None:
        """Run the timers each TICK while there is work, else each IDLE_TICK (on the beat)."""
        while True:
            busy = bool(self.core.attempts) or self.core.may_offer()
            with trio.move_on_at(next_beat(trio.current_time(), TICK if busy else IDLE_TICK)):
                if busy:
                    await trio.sleep_forever()
                else:
                    await self._work.wait()
            self._work = trio.Event()
            self.tick(trio.current_time())

    def tick(self, now: float) -> None:
        neighbours = self.router.peer_links()
        self.core.neighbours_are(neighbours)
        for gone in [n for n in self._told if n not in neighbours]:
            del self._told[gone]
        reachable = self.router.views.current.routes.distance
        for peer in list(self.core.attempts):
            if peer in neighbours or peer not in reachable:
                # A control connection came (its path is direct) or the peer left the mesh.
                was_up = self.is_punched(peer)
                self.core.forget(peer)
                self._stop(peer)
                if was_up:
                    self.router.report_punched(peer, None)
        for peer in self.core.expired(now):
            if self._logs.allow(f"failed {peer}", now) is not None:
                log.info("no direct path to %s: relayed", self.router.nick(peer))
            self._stop(peer)
        since = time.monotonic() - WANT_AGE  # the switch's clock is the forwarder's
        wanted = {
            peer
            for peer in self.switch.unicast_peers(since)
            if peer not in neighbours and peer in reachable
        }
        self.router.want_direct(wanted)
        if not self.core.may_offer():
            return
        for peer, offer in self.core.offers(now, wanted):
            if not self.router.unicast(core.CHANNEL, peer, core.encode(offer)):
                self.core.failed(peer, now, "unreachable through the mesh")

    def status(self) -> dict[str, Any]:
        nicknames = {p: self.router.nick(p) for p in self.core.records}
        return self.core.status(trio.current_time(), nicknames)
