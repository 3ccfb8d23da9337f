"""Beats: on multiples of the interval, and of the wall clock's once aligned."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnet import beats


@pytest.fixture
def unaligned() -> Iterator[None]:
    yield
    beats._offset = 0.0


@given(st.floats(0, 1e6), st.sampled_from([0.5, 1.0, 2.0, 10.0]))
def test_the_next_beat_is_a_multiple_within_one_interval(now: float, interval: float) -> None:
    beat = beats.next_beat(now, interval)
    assert now < beat <= now + interval
    assert beat / interval == pytest.approx(round(beat / interval))


def test_two_routers_whose_clocks_start_apart_beat_together(unaligned: None) -> None:
    """Each router's trio clock starts at its own random offset; aligned with the wall clock,
    their beats fall on the same instants, so what each sends on its beat arrives together."""
    wall = time.time()
    starts = (12_345.678, 98_765.4321)  # each router's own clock at the same wall instant
    instants = []
    for start in starts:
        beats.align_with_wall_clock(start)
        beat = beats.next_beat(start + 0.3, 2.0)
        instants.append(beat - start + wall)  # the same beat, on the wall clock
        assert start + 0.3 < beat <= start + 2.3
    assert instants[0] == pytest.approx(instants[1], abs=1e-3)
    assert instants[0] / 2.0 == pytest.approx(round(instants[0] / 2.0), abs=1e-3)
