"""One neighbour's UDP path: is it alive both ways, how long is the round trip, how big may it be.

A TCP control connection proves nothing about UDP (a firewall may pass one and not the other, or
pass UDP one way only), so a path counts as ESTABLISHED only when we hear the neighbour's
heartbeats *and* its latest heartbeat says it hears ours. It is LOST once nothing has been heard
for ``dead_after`` (or the neighbour stops hearing us) after having been established.

A path may be **vouched for**: while fastdp's probes cross the same underlay to the same neighbour
every second (``vouch``), they prove it alive both ways, and heartbeats slow to one per
``relaxed_interval`` (enough to keep a NAT mapping and the echo fresh): each heartbeat wakes both
routers, and for an idle mesh they were the largest part of its CPU. When the vouching ends
(``relax(False)``: fastdp went down), a heartbeat goes at once and they come every
``heartbeat_interval`` again; what fastdp last proved still counts, so a path that is really gone
is lost ``dead_after`` after fastdp's last answer, as if the heartbeats had never slowed.

Heartbeats carry our timestamp and echo the neighbour's latest one *advanced by the time we held
it*, so ``now - echo`` on arrival is the network round trip alone, whatever the heartbeat interval
(both clocks only ever measure their own durations; they need not agree).

Path MTU is discovered, not assumed (payload sizes count whatever the shell's probes count; the
receiver answers a probe with its id and received size):

- ``payload_mtu`` starts at ``min_payload``, which every IPv4 path must carry.
- Once established, a search between the largest acked size and ``max_payload``: the first probe
  tries ``max_payload`` itself (on most paths it passes: done in one round trip), after that a
  binary search, down to the byte. A probe times out after ``2 x RTT`` (floor 50 ms; 1 s while no
  RTT is known); a size is concluded too big after ``probe_attempts`` timeouts in a row, so a
  lost datagram does not shrink the path. About ``log2(max - min)`` probes when max fails.
- Every ``reprobe_interval`` the search runs again upward from what is known (routes change).
- ``on_send_error_too_big`` (EMSGSIZE: the kernel knows a smaller MTU) caps the search at once;
  if it lowers ``payload_mtu``, a fresh search starts from ``min_payload`` immediately.
- Losing the path forgets the MTU (it may come back over another route); re-establishing searches
  again.

Pure: ``now`` is passed in; :meth:`UdpPath.tick` returns what to send, and
:meth:`UdpPath.next_wake` when to call it again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshnet.beats import next_beat

PROBE_TIMEOUT_FLOOR = 0.05
PROBE_TIMEOUT_NO_RTT = 1.0
_RTT_GAIN = 1 / 8  # RFC 6298's alpha for the smoothed RTT


class PathState(enum.Enum):
    UNKNOWN = "unknown"  # never established yet
    ESTABLISHED = "established"
    LOST = "lost"  # was established, is not any more


@dataclass(frozen=True)
class SendHeartbeat:
    timestamp_us: int  # our clock; never 0 (0 means "nothing to echo")
    echo_us: int  # their latest timestamp plus how long we held it; 0: none heard yet
    hear_you: bool


@dataclass(frozen=True)
class SendProbe:
    probe_id: int
    size: int


PathAction = SendHeartbeat | SendProbe


@dataclass(frozen=True)
class PathStatistics:
    state: PathState
    rtt: float | None
    payload_mtu: int
    searching: bool
    heartbeats_sent: int
    heartbeats_received: int
    probes_sent: int
    probes_acked: int
    probes_timed_out: int
    stray_acks: int
    too_big_errors: int
    times_established: int
    times_lost: int


@dataclass
class _Probe:
    size: int
    attempt: int
    deadline: float


class UdpPath:
    """Liveness, RTT and path MTU of the UDP path to one neighbour."""

    def __init__(
        self,
        *,
        max_payload: int,
        min_payload: int = 548,
        heartbeat_interval: float = 1.0,
        dead_after: float = 5.0,
        relaxed_interval: float = 10.0,
        probe_attempts: int = 3,
        reprobe_interval: float = 600.0,
    ) -> None:
        if not 0 < min_payload <= max_payload:
            raise ValueError(
                f"need 0 < min_payload <= max_payload, got {min_payload}, {max_payload}"
            )
        if not 0 < heartbeat_interval < dead_after:
            raise ValueError("need 0 < heartbeat_interval < dead_after")
        if relaxed_interval < heartbeat_interval:
            raise ValueError("need relaxed_interval >= heartbeat_interval")
        if probe_attempts < 1:
            raise ValueError("probe_attempts must be at least 1")
        self._max = max_payload
        self._min = min_payload
        self._interval = heartbeat_interval
        self._relaxed_interval = relaxed_interval
        self._relaxed = False
        self._dead_after = dead_after
        self._attempts = probe_attempts
        self._reprobe_interval = reprobe_interval

        self._now = float("-inf")  # the latest time we were told
        self._state = PathState.UNKNOWN
        self._next_heartbeat = float("-inf")
        self._tell_now = False  # our hear_you changed: tell them without waiting
        self._hearing = False
        self._last_heard: float | None = None
        self._their_ts = 0
        self._their_ts_at = 0.0
        self._they_hear_us = False
        self._srtt: float | None = None

        self._lo = min_payload  # largest size known to pass (min_payload is assumed to)
        self._hi = max_payload  # largest size not yet known to fail
        self._searching = False
        self._try_top = False  # the next probe tries _hi itself rather than the midpoint
        self._inflight: _Probe | None = None
        self._sent: dict[int, int] = {}  # probe id -> size, for this search
        self._next_id = 1
        self._reprobe_at = float("inf")

        self._heartbeats_sent = 0
        self._heartbeats_received = 0
        self._probes_sent = 0
        self._probes_acked = 0
        self._probes_timed_out = 0
        self._stray_acks = 0
        self._too_big = 0
        self._times_established = 0
        self._times_lost = 0

    @property
    def state(self) -> PathState:
        return self._state

    @property
    def established(self) -> bool:
        return self._state is PathState.ESTABLISHED

    @property
    def relaxed(self) -> bool:
        return self._relaxed

    @property
    def rtt(self) -> float | None:
        """Smoothed round trip in seconds; None until a heartbeat echo came back."""
        return self._srtt

    @property
    def payload_mtu(self) -> int:
        """The largest payload known to pass (``min_payload`` until probes prove more)."""
        return self._lo

    @property
    def searching(self) -> bool:
        return self._searching

    # --- events --------------------------------------------------------------------------------

    def tick(self, now: float) -> list[PathAction]:
        """What to send now; call again at :meth:`next_wake` or after any event."""
        self._advance(now)
        actions: list[PathAction] = []
        if self._tell_now or now >= self._next_heartbeat:
            actions.append(self._heartbeat(now))
        if self._state is PathState.ESTABLISHED:
            probe = self._probe(now)
            if probe is not None:
                actions.append(probe)
        return actions

    def on_heartbeat(
        self, now: float, their_timestamp_us: int, echo_us: int, they_hear_us: bool
    ) -> None:
        self._now = max(self._now, now)
        self._heartbeats_received += 1
        self._last_heard = now
        self._their_ts = their_timestamp_us
        self._their_ts_at = now
        self._they_hear_us = they_hear_us
        if echo_us > 0:
            sample = now - echo_us / 1e6
            if 0 <= sample <= self._dead_after:  # else: a restarted peer or a bogus echo
                if self._srtt is None:
                    self._srtt = sample
                else:
                    self._srtt += _RTT_GAIN * (sample - self._srtt)
        self._advance(now)

    def relax(self, relaxed: bool) -> None:
        """Vouched for (True) or no longer (False): see the module docstring."""
        if relaxed == self._relaxed:
            return
        self._relaxed = relaxed
        if not relaxed:
            self._tell_now = True  # back on our own: find out at once whether we still are

    def vouch(self, now: float) -> None:
        """Another path over the same underlay was just answered by this neighbour: it hears
        us and we hear it (whether it hears *these* datagrams its next heartbeat says)."""
        self._now = max(self._now, now)
        if self._last_heard is not None:  # first contact is always a heartbeat's
            self._last_heard = max(self._last_heard, now)
        self._advance(now)

    def on_probe_ack(self, now: float, probe_id: int, size: int) -> None:
        self._now = max(self._now, now)
        sent = self._sent.pop(probe_id, None)
        if sent is None or sent != size:
            self._stray_acks += 1  # late (from before a loss), duplicated or bogus
            return
        self._probes_acked += 1
        if size > self._lo:
            self._lo = size
            self._hi = max(self._hi, size)  # a late ack outranks an earlier "too big" verdict
        if self._inflight is not None and self._inflight.size <= self._lo:
            self._inflight = None
            self._try_top = False

    def on_send_error_too_big(self, now: float, size: int) -> None:
        """The kernel refused to send ``size`` (EMSGSIZE): nothing that big can pass."""
        self._now = max(self._now, now)
        self._too_big += 1
        limit = max(size - 1, self._min)
        if self._inflight is not None and self._inflight.size > limit:
            self._inflight = None  # concluded at once: no point retrying what cannot leave
        if self._lo > limit:
            self._lo = self._min  # what we used is too big: back to safe, and search again now
            self._start_search(upward=False)
        self._hi = max(min(self._hi, limit), self._lo)
        self._try_top = False

    def next_wake(self) -> float:
        """When :meth:`tick` next has something to do."""
        if self._tell_now:
            return self._now
        wake = self._next_heartbeat
        if self._hearing and self._last_heard is not None:
            wake = min(wake, self._last_heard + self._dead_after)
        if self._state is PathState.ESTABLISHED:
            if self._inflight is not None:
                wake = min(wake, self._inflight.deadline)
            elif self._searching:
                wake = min(wake, self._now)
            else:
                wake = min(wake, self._reprobe_at)
        return wake

    # --- internals -----------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Re-evaluate liveness at ``now``: hearing them, and the state that follows."""
        self._now = max(self._now, now)
        hearing = self._last_heard is not None and now - self._last_heard < self._dead_after
        if hearing != self._hearing:
            self._hearing = hearing
            self._tell_now = True
        up = hearing and self._they_hear_us
        if up and self._state is not PathState.ESTABLISHED:
            self._state = PathState.ESTABLISHED
            self._times_established += 1
            self._start_search(upward=True)
        elif not up and self._state is PathState.ESTABLISHED:
            self._state = PathState.LOST
            self._times_lost += 1
            self._lo, self._hi = self._min, self._max
            self._searching = False
            self._inflight = None
            self._sent.clear()

    def _heartbeat(self, now: float) -> SendHeartbeat:
        self._tell_now = False
        interval = self._relaxed_interval if self._relaxed else self._interval
        self._next_heartbeat = next_beat(now, interval)
        self._heartbeats_sent += 1
        echo = 0
        if self._last_heard is not None and self._their_ts > 0:
            echo = self._their_ts + round((now - self._their_ts_at) * 1e6)
        return SendHeartbeat(max(1, round(now * 1e6)), echo, self._hearing)

    def _start_search(self, *, upward: bool) -> None:
        """Search between what is known to pass and ``max_payload`` (or a lowered cap)."""
        self._searching = True
        self._try_top = upward
        if upward:
            self._hi = self._max
        self._inflight = None
        self._sent.clear()

    def _probe(self, now: float) -> SendProbe | None:
        inflight = self._inflight
        if inflight is not None:
            if now < inflight.deadline:
                return None
            self._probes_timed_out += 1
            if inflight.attempt < self._attempts:
                return self._send_probe(now, inflight.size, inflight.attempt + 1)
            self._inflight = None
            self._hi = max(min(self._hi, inflight.size - 1), self._lo)
            self._try_top = False
        if not self._searching:
            if now < self._reprobe_at:
                return None
            self._start_search(upward=True)
        if self._lo >= self._hi:
            self._searching = False
            self._reprobe_at = now + self._reprobe_interval
            return None
        size = self._hi if self._try_top else (self._lo + self._hi + 1) // 2
        return self._send_probe(now, size, 1)

    def _send_probe(self, now: float, size: int, attempt: int) -> SendProbe:
        if self._srtt is None:
            timeout = PROBE_TIMEOUT_NO_RTT
        else:
            timeout = max(2 * self._srtt, PROBE_TIMEOUT_FLOOR)
        probe_id = self._next_id
        self._next_id = self._next_id % 0xFFFFFFFF + 1  # a u32 on the wire, never 0
        self._sent[probe_id] = size
        self._inflight = _Probe(size, attempt, now + timeout)
        self._probes_sent += 1
        return SendProbe(probe_id, size)

    def statistics(self) -> PathStatistics:
        return PathStatistics(
            state=self._state,
            rtt=self._srtt,
            payload_mtu=self._lo,
            searching=self._searching,
            heartbeats_sent=self._heartbeats_sent,
            heartbeats_received=self._heartbeats_received,
            probes_sent=self._probes_sent,
            probes_acked=self._probes_acked,
            probes_timed_out=self._probes_timed_out,
            stray_acks=self._stray_acks,
            too_big_errors=self._too_big,
            times_established=self._times_established,
            times_lost=self._times_lost,
        )
