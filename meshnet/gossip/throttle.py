"""Per-source limits on what strangers can make us do: token buckets and log-line throttles.

Used for failed password handshakes: each inbound attempt with a password costs its source
address a token (a proven peer gets it back), so a guesser gets a handful of online guesses and
then one per refill interval, and the connection is closed before any SPAKE2 work once the bucket
is empty. Both tables are keyed by what others send, so both are capped: the least recently used
source is forgotten first (it then starts again with a full bucket, which only an attacker with
thousands of addresses can exploit, and one with that many addresses is not stopped per source
anyway). Pure: time comes in as ``now``.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

MAX_SOURCES = 4096


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """One token bucket per key: ``burst`` tokens, one more every ``refill_every`` seconds."""

    def __init__(
        self, *, burst: int = 5, refill_every: float = 10.0, max_keys: int = MAX_SOURCES
    ) -> None:
        if burst < 1 or refill_every <= 0 or max_keys < 1:
            raise ValueError("burst and max_keys must be at least 1, refill_every positive")
        self._burst = burst
        self._refill_every = refill_every
        self._max_keys = max_keys
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(float(self._burst), now)
        else:
            elapsed = max(0.0, now - bucket.at)
            bucket.tokens = min(float(self._burst), bucket.tokens + elapsed / self._refill_every)
            bucket.at = max(bucket.at, now)
        self._buckets[key] = bucket  # most recently used last
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return bucket

    def take(self, key: str, now: float) -> bool:
        """Spend a token for ``key``; False (and nothing spent) when its bucket is empty."""
        bucket = self._bucket(key, now)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def give_back(self, key: str, now: float) -> None:
        """Return a token ``take`` spent on what turned out fine (never above ``burst``)."""
        bucket = self._bucket(key, now)
        bucket.tokens = min(float(self._burst), bucket.tokens + 1.0)

    def tokens(self, key: str, now: float) -> float:
        """How many tokens ``key`` has (a full bucket for a key never seen); for status/tests."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return float(self._burst)
        elapsed = max(0.0, now - bucket.at)
        return min(float(self._burst), bucket.tokens + elapsed / self._refill_every)


class LogThrottle:
    """At most one log line per key every ``every`` seconds, counting the ones held back.

    ``allow`` returns None to stay quiet, or how many lines were suppressed since the last one
    (0 for a first line), to say so in the line that does get logged.
    """

    def __init__(self, *, every: float = 10.0, max_keys: int = MAX_SOURCES) -> None:
        if every <= 0 or max_keys < 1:
            raise ValueError("every must be positive and max_keys at least 1")
        self._every = every
        self._max_keys = max_keys
        self._state: collections.OrderedDict[str, tuple[float, int]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._state)

    def allow(self, key: str, now: float) -> int | None:
        last = self._state.pop(key, None)
        if last is not None and now - last[0] < self._every:
            self._state[key] = (last[0], last[1] + 1)
            return None
        self._state[key] = (now, 0)
        while len(self._state) > self._max_keys:
            self._state.popitem(last=False)
        return 0 if last is None else last[1]
