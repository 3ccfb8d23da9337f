"""The replay window: each sealed datagram's sequence number is accepted at most once."""

from __future__ import annotations

REPLAY_WINDOW = 8192
"""How far below the highest sequence seen a datagram is still taken. An express datagram
(:mod:`meshnet.dataplane.kernel.lanes`) overtakes the bulk ones queued in the receiver's socket
before it: up to its 8 MiB of buffer, ~5,800 datagrams. They must still be taken then."""
_FULL = (1 << REPLAY_WINDOW) - 1


class ReplayWindow:
    """The sequence numbers already accepted from one hop sender under one key.

    Accepts each number at most once, in any order within the last :data:`REPLAY_WINDOW`
    numbers below the highest seen, and rejects anything older (RFC 6479's idea, with a Python
    int as the bitmap). Only :func:`decode_datagram` should update it, after the tag checked
    out; otherwise a forged datagram could burn a sequence number or slide the window.
    """

    __slots__ = ("_bits", "_highest")

    def __init__(self) -> None:
        self._highest = -1
        self._bits = 0  # bit i set: highest - i was accepted

    @property
    def highest(self) -> int | None:
        return None if self._highest < 0 else self._highest

    def would_accept(self, seq: int) -> bool:
        """Whether ``seq`` is new, without recording it (a cheap pre-check before crypto)."""
        if seq > self._highest:
            return True
        offset = self._highest - seq
        return offset < REPLAY_WINDOW and not (self._bits >> offset) & 1

    def accept_run(self, first: int, count: int) -> bool:
        """Record ``first`` .. ``first + count - 1`` at once if none was seen and all are
        within the window (a super-frame's datagrams, in order, overtaken or not); False,
        recording nothing, otherwise."""
        if count < 1 or first < 0:
            return False
        last = first + count - 1
        if first > self._highest:
            shift = last - self._highest
            run = (1 << min(count, REPLAY_WINDOW)) - 1
            if shift >= REPLAY_WINDOW:
                self._bits = run
            else:
                self._bits = ((self._bits << shift) | run) & _FULL
            self._highest = last
            return True
        # Older than the highest (overtaken by datagrams sent after it: the express lane's);
        # a run that reaches the highest holds a number seen already.
        below = self._highest - last
        if below <= 0 or self._highest - first >= REPLAY_WINDOW:
            return False
        run = ((1 << count) - 1) << below
        if self._bits & run:
            return False
        self._bits |= run
        return True

    def check_and_update(self, seq: int) -> bool:
        """Record ``seq`` if it is new; False for a replay or one too old to tell."""
        highest = self._highest
        if seq > highest:
            shift = seq - highest
            if shift >= REPLAY_WINDOW:
                self._bits = 1
            else:
                self._bits = ((self._bits << shift) | 1) & _FULL
            self._highest = seq
            return True
        offset = highest - seq
        if offset >= REPLAY_WINDOW:
            return False
        bit = 1 << offset
        if self._bits & bit:
            return False
        self._bits |= bit
        return True
