"""Per-source token buckets and log throttles, on an injected clock."""

from __future__ import annotations

import pytest

from meshnet.gossip.throttle import LogThrottle, TokenBuckets


def test_a_burst_then_one_token_per_interval() -> None:
    buckets = TokenBuckets(burst=5, refill_every=10.0)
    assert [buckets.take("a", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert not buckets.take("a", 9.9)
    assert buckets.take("a", 10.0)  # 1 token, 0 left
    assert not buckets.take("a", 10.0)
    assert [buckets.take("a", 100.0) for _ in range(6)] == [True] * 5 + [False]  # capped at 5


def test_sources_are_independent() -> None:
    buckets = TokenBuckets(burst=2, refill_every=10.0)
    assert buckets.take("a", 0) and buckets.take("a", 0) and not buckets.take("a", 0)
    assert buckets.take("b", 0)
    assert buckets.tokens("b", 0) == 1.0 and buckets.tokens("never", 0) == 2.0


def test_given_back_tokens_never_exceed_the_burst() -> None:
    buckets = TokenBuckets(burst=2, refill_every=10.0)
    assert buckets.take("a", 0)
    buckets.give_back("a", 0)
    buckets.give_back("a", 0)
    assert buckets.tokens("a", 0) == 2.0
    for _ in range(20):  # a legitimate peer reconnecting often costs nothing
        assert buckets.take("a", 1)
        buckets.give_back("a", 1)


def test_time_going_backwards_adds_nothing() -> None:
    buckets = TokenBuckets(burst=1, refill_every=10.0)
    assert buckets.take("a", 100.0)
    assert not buckets.take("a", 50.0)
    assert not buckets.take("a", 100.0)


def test_the_table_is_capped_oldest_forgotten_first() -> None:
    buckets = TokenBuckets(burst=1, refill_every=10.0, max_keys=3)
    for key in "abc":
        assert buckets.take(key, 0)
    assert not buckets.take("a", 0)  # a is now the most recently used
    assert buckets.take("d", 0)  # evicts b
    assert len(buckets) == 3
    assert buckets.tokens("b", 0) == 1.0  # forgotten: a full bucket again
    assert buckets.tokens("a", 0) == 0.0
    for i in range(10_000):
        buckets.take(f"x{i}", 0)
    assert len(buckets) == 3


@pytest.mark.parametrize(
    "kwargs", [{"burst": 0}, {"refill_every": 0.0}, {"max_keys": 0}, {"refill_every": -1.0}]
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TokenBuckets(**kwargs)  # type: ignore[arg-type]


def test_log_throttle_counts_what_it_held_back() -> None:
    logs = LogThrottle(every=10.0)
    assert logs.allow("a", 0.0) == 0
    assert [logs.allow("a", t) for t in (1.0, 2.0, 9.9)] == [None] * 3
    assert logs.allow("b", 5.0) == 0
    assert logs.allow("a", 10.0) == 3
    assert logs.allow("a", 10.5) is None
    assert logs.allow("a", 25.0) == 1


def test_log_throttle_is_capped() -> None:
    logs = LogThrottle(every=10.0, max_keys=2)
    for i in range(1000):
        assert logs.allow(f"k{i}", 0.0) == 0
    assert len(logs) == 2
    with pytest.raises(ValueError):
        LogThrottle(every=0)
