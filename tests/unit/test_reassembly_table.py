"""The per-origin reassembly table: capped, expiring, and flushing only what is pending."""

from __future__ import annotations

import os

from meshnet.dataplane.sleeve import vnet as vn
from meshnet.dataplane.sleeve import wire as sw
from tests.unit.test_vnet import build_superframe

V, FRAME, _ = build_superframe(4, os.urandom(1200 * 4), 1200)
BODIES = sw.segment_bodies(1, V, FRAME)
NEXT = sw.segment_bodies(2, V, FRAME)  # the next super-frame of the same origin


def add(table: sw.ReassemblyTable, origin: int, bodies: list[bytes], now: float) -> list[object]:
    reassembler = table.get(origin, now)
    assert reassembler is not None
    out: list[object] = []
    for body in bodies:
        out += reassembler.add(body, now)
    table.touched(origin)
    return out


def test_a_full_table_makes_room_by_forgetting_the_least_recently_used_idle_origin() -> None:
    table = sw.ReassemblyTable(limit=3)
    for origin in (1, 2, 3):
        assert add(table, origin, BODIES, float(origin)) == [(vn.pack_vnet(V), FRAME)]
    add(table, 1, [], 4.0)  # 1 used again: 2 is now the least recently used
    assert table.get(4, 5.0) is not None
    assert len(table) == 3
    assert table.get(2, 6.0) is not None  # 2 was forgotten, a new one made; 3 went
    assert len(table) == 3


def test_origins_mid_superframe_are_never_evicted_and_a_full_table_refuses() -> None:
    table = sw.ReassemblyTable(limit=2)
    add(table, 1, BODIES[:1], 0.0)
    add(table, 2, BODIES[:1], 0.0)
    assert table.pending()
    assert table.get(3, 1.0) is None
    assert len(table) == 2


def test_many_origins_stay_within_the_limit() -> None:
    table = sw.ReassemblyTable(limit=16)
    for origin in range(10_000):
        add(table, origin, BODIES, float(origin))
    assert len(table) == 16


def test_flush_looks_at_pending_origins_only_and_delivers_what_arrived() -> None:
    table = sw.ReassemblyTable()
    add(table, 1, BODIES, 0.0)
    add(table, 2, BODIES[:2], 0.0)
    assert table.pending()
    flushed = table.flush(1.0, older_than=0.5)
    assert [origin for origin, _ in flushed] == [2]
    assert len(flushed[0][1]) == 1  # one rebuilt run of the two segments that arrived
    assert not table.pending()


def test_idle_and_departed_origins_expire() -> None:
    table = sw.ReassemblyTable(idle_after=60.0)
    add(table, 1, BODIES, 0.0)
    add(table, 2, BODIES, 50.0)
    add(table, 3, BODIES[:2], 50.0)  # pending, its origin gone from the routes
    assert table.expire(70.0, known={1, 2}) == []  # 1 idle; 3 gone: its frames not delivered
    assert len(table) == 1
    assert not table.pending()
    add(table, 2, NEXT[:2], 100.0)
    expired = table.expire(200.0, known={2})
    assert [origin for origin, _ in expired] == [2]  # what it held is delivered
    assert len(table) == 0
