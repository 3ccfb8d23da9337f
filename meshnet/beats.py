"""One clock beat for what a router does periodically.

Sleeve heartbeats, fastdp probes and DNS's housekeeping run on multiples of their interval of
the clock, not an interval after whatever happened last: every neighbour's heartbeat and probe
fall due at the same instant, and an idle router wakes once per beat instead of once per
neighbour and kind (each wake-up of the trio loop costs more than the work it does).

The multiples are of the wall clock's seconds (:func:`align_with_wall_clock`), not of the
process's own clock (trio's starts at a random offset): neighbours whose clocks agree (NTP keeps
them within milliseconds) then beat together, so what they send on their beat (probes,
heartbeats) arrives together too: one wake-up for all of them instead of one per neighbour.
"""

from __future__ import annotations

import math
import time

#: The wall clock minus the clock callers pass as ``now`` (0 until aligned: tests' own clocks).
_offset = 0.0


def align_with_wall_clock(now: float) -> None:
    """Beat on the wall clock's multiples from now on; ``now`` is the caller's clock (the
    daemon's trio clock), read at the same moment as the wall clock."""
    global _offset
    _offset = time.time() - now


def next_beat(now: float, interval: float) -> float:
    """The first multiple of ``interval`` (on the wall clock, once aligned) after ``now``: at
    most ``interval`` away."""
    beat = (math.floor((now + _offset) / interval) + 1) * interval - _offset
    return beat if beat > now else beat + interval  # float rounding at a multiple
