"""One clock beat for what a router does periodically.

Sleeve heartbeats, fastdp probes and DNS's housekeeping run on multiples of their interval of
the clock, not an interval after whatever happened last: every neighbour's heartbeat and probe
fall due at the same instant, and an idle router wakes once per beat instead of once per
neighbour and kind (each wake-up of the trio loop costs more than the work it does).
"""

from __future__ import annotations

import math


def next_beat(now: float, interval: float) -> float:
    """The first multiple of ``interval`` after ``now``: at most ``interval`` away."""
    return (math.floor(now / interval) + 1) * interval
