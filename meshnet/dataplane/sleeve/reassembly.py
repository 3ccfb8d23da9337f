"""Super-frames put back together from their SEGMENT bodies, losing only what was lost.

The :class:`Reassembler` at the origin's far end gives back the exact super-frame, or, when some
datagrams were lost, valid smaller ones carrying what did arrive, so a lost datagram costs TCP
one segment, not 64 KiB. Pure: ``now`` is passed in.
"""

from __future__ import annotations

import functools
from collections.abc import Container
from dataclasses import dataclass

from meshnet.dataplane.sleeve import vnet as vn
from meshnet.dataplane.sleeve.header import Buffer, DatagramDrop, DatagramError
from meshnet.dataplane.sleeve.segments import (
    MAX_SEGMENT_HEADERS,
    SEGMENT_OVERHEAD,
    SEGMENT_PREFIX,
    SEGMENT_PREFIX_SIZE,
    SERIAL_MASK,
)
from meshnet.errors import RemoteProtocolError

_SERIAL_HALF = 1 << 31
_RESTART_GAP = 1024
"""A super-frame id this far behind the newest finished one means the origin restarted."""


def _newer(a: int, b: int) -> bool:
    """Whether super-frame id ``a`` is after ``b`` (RFC 1982 serial numbers: ids wrap)."""
    return a != b and (a - b) & SERIAL_MASK < _SERIAL_HALF


def _serial_cmp(a: int, b: int) -> int:
    return 0 if a == b else (1 if _newer(a, b) else -1)


_serial_key = functools.cmp_to_key(_serial_cmp)


@dataclass(frozen=True, slots=True)
class ReassemblerStatistics:
    completed: int
    """Super-frames delivered whole."""
    flushed: int
    """Partial super-frames delivered as rebuilt runs."""
    runs: int
    """Frames rebuilt from partial super-frames."""
    segments_lost: int
    """Segments never received of the flushed super-frames."""
    duplicates: int
    late: int
    """Segments of super-frames already delivered or flushed."""
    inconsistent: int


class _Partial:
    __slots__ = ("count", "first_seen", "headers", "payloads", "received", "vnet", "vnet_raw")

    def __init__(
        self, count: int, first_seen: float, headers: bytes, vnet: vn.VnetHeader, raw: bytes
    ) -> None:
        self.count = count
        self.first_seen = first_seen
        self.headers = headers
        self.vnet = vnet
        self.vnet_raw = raw
        self.payloads: list[memoryview | None] = [None] * count
        self.received = 0


class Reassembler:
    """Super-frames from one origin peer, put back together from SEGMENT bodies.

    Returns (virtio-net header, frame) pairs to write to the TAP: the original super-frame,
    byte for byte, once all its segments arrived. A super-frame that will not complete (a newer
    one completed, it went stale, or too many are pending) is flushed as valid smaller frames
    made of what did arrive. At most ``max_partial`` super-frames are held.

    The origin should start its ids at a random value: ids far behind the last delivered are
    taken as a restart of the origin; slightly behind, as late segments and dropped.
    """

    def __init__(self, *, max_partial: int = 4) -> None:
        if max_partial < 1:
            raise ValueError("max_partial must be at least 1")
        self._max_partial = max_partial
        self._partials: dict[int, _Partial] = {}
        self._floor: int | None = None  # newest id delivered or flushed; older ids are late
        self._completed = 0
        self._flushed = 0
        self._run_count = 0
        self._lost = 0
        self._duplicates = 0
        self._late = 0
        self._inconsistent = 0

    @property
    def oldest(self) -> float | None:
        """When the oldest pending super-frame's first segment arrived (None: none pending)."""
        return min((p.first_seen for p in self._partials.values()), default=None)

    def pending(self) -> int:
        """Super-frames waiting for segments; while any do, call :meth:`flush` soon."""
        return len(self._partials)

    def statistics(self) -> ReassemblerStatistics:
        return ReassemblerStatistics(
            self._completed,
            self._flushed,
            self._run_count,
            self._lost,
            self._duplicates,
            self._late,
            self._inconsistent,
        )

    def add(self, body: Buffer, now: float) -> list[tuple[Buffer, Buffer]]:
        """Take one SEGMENT body; returns the frames now ready (often none)."""
        n = len(body)
        if n < SEGMENT_OVERHEAD:
            raise DatagramError(DatagramDrop.BAD_BODY, f"SEGMENT body of {n} bytes")
        sid, index, count, header_len = SEGMENT_PREFIX.unpack_from(body)
        start = SEGMENT_OVERHEAD + header_len
        if (
            index >= count
            or header_len < vn.MIN_TCP_HEADERS
            or header_len > MAX_SEGMENT_HEADERS
            or n <= start
        ):
            raise DatagramError(
                DatagramDrop.BAD_BODY, f"segment {index}/{count}, L={header_len}, {n} bytes"
            )
        out = self._behind_floor(sid)
        if out is None:
            return []
        partial = self._partials.get(sid)
        if partial is None:
            partial = self._start(sid, body, count, header_len, now)
            if partial is None:  # a super-frame of one segment: nothing to wait for
                self._completed += 1
                out += self._finalize(sid)
                out.append((body[SEGMENT_PREFIX_SIZE:SEGMENT_OVERHEAD], body[SEGMENT_OVERHEAD:]))
                return out
        elif (
            count != partial.count
            or body[SEGMENT_PREFIX_SIZE:SEGMENT_OVERHEAD] != partial.vnet_raw
            or body[SEGMENT_OVERHEAD:start] != partial.headers
        ):
            self._drop(sid)
            raise DatagramError(DatagramDrop.INCONSISTENT, f"segment {index} of super-frame {sid}")
        size = n - start
        gso_size = partial.vnet.gso_size
        if size != gso_size if index < count - 1 else size > gso_size:
            self._drop(sid)
            raise DatagramError(DatagramDrop.INCONSISTENT, f"segment {index} of {size} bytes")
        payloads = partial.payloads
        if payloads[index] is not None:
            self._duplicates += 1
            return out
        payloads[index] = memoryview(body)[start:]
        partial.received += 1
        return out + self._progress(sid, partial)

    def add_uniform(self, bodies: list[Buffer], now: float) -> list[tuple[Buffer, Buffer]]:
        """Take the SEGMENT bodies of consecutive segments whose prefixes are known to agree
        but for the index (:func:`uniform_segments`): the first is checked as by :meth:`add`,
        the rest only for size."""
        out = self.add(bodies[0], now)
        sid, index0, count, header_len = SEGMENT_PREFIX.unpack_from(bodies[0])
        partial = self._partials.get(sid)
        if partial is None or index0 + len(bodies) > count:  # done, late or refused: slowly
            for body in bodies[1:]:
                out += self.add(body, now)
            return out
        start = SEGMENT_OVERHEAD + header_len
        gso_size = partial.vnet.gso_size
        last = bodies[-1]
        last_size = len(last) - start
        last_index = index0 + len(bodies) - 1
        # The first body's size was checked by add(), and the middle ones are as long.
        if last_size != gso_size if last_index < count - 1 else last_size > gso_size:
            self._drop(sid)
            raise DatagramError(DatagramDrop.INCONSISTENT, f"segments of super-frame {sid}")
        payloads = partial.payloads
        received = partial.received
        for index in range(index0 + 1, last_index + 1):
            if payloads[index] is None:
                payloads[index] = memoryview(bodies[index - index0])[start:]
                received += 1
            else:
                self._duplicates += 1
        partial.received = received
        return out + self._progress(sid, partial)

    def complete(self, sid: int) -> list[tuple[Buffer, Buffer]] | None:
        """Super-frame ``sid`` arrived whole in one run, so the caller delivers it itself: what
        older pending super-frames this flushes (to deliver first), or None if ``sid`` is late
        (a duplicate: drop it)."""
        out = self._behind_floor(sid)
        if out is None:
            return None
        self._completed += 1
        return out + self._finalize(sid)

    def _behind_floor(self, sid: int) -> list[tuple[Buffer, Buffer]] | None:
        """For a segment or a whole super-frame ``sid``: None if it is late (counted); else
        what it flushes because it shows the origin restarted (the floor is then forgotten)."""
        floor = self._floor
        if floor is None or _newer(sid, floor):
            return []
        if (floor - sid) & SERIAL_MASK <= _RESTART_GAP:
            self._late += 1
            return None
        out = self._finalize(None)  # the origin restarted: deliver what is held, forget
        self._floor = None
        return out

    def _progress(self, sid: int, partial: _Partial) -> list[tuple[Buffer, Buffer]]:
        """After storing segments: the whole super-frame once complete (after anything older),
        else room made when too many are pending."""
        if partial.received == partial.count:
            del self._partials[sid]
            self._completed += 1
            whole = b"".join((partial.headers, *partial.payloads))  # type: ignore[arg-type]
            return [*self._finalize(sid), (partial.vnet_raw, whole)]
        if len(self._partials) > self._max_partial:
            return self._finalize(min(self._partials, key=_serial_key))
        return []

    def flush(self, now: float, older_than: float) -> list[tuple[Buffer, Buffer]]:
        """Deliver, as rebuilt runs, every pending super-frame whose first segment arrived
        before the time ``older_than`` (and any older id still pending).

        ``older_than`` is a time like ``now``, not an age: ``flush(now, now - 0.005)``. A
        super-frame arriving at ``now`` is never stale, whatever ``older_than`` says.
        """
        cutoff = min(older_than, now)
        stale = [sid for sid, p in self._partials.items() if p.first_seen < cutoff]
        if not stale:
            return []
        return self._finalize(max(stale, key=_serial_key))

    def flush_all(self) -> list[tuple[Buffer, Buffer]]:
        """Deliver everything pending (the origin went away, or shutdown)."""
        return self._finalize(None)

    def _start(
        self, sid: int, body: Buffer, count: int, header_len: int, now: float
    ) -> _Partial | None:
        raw = bytes(body[SEGMENT_PREFIX_SIZE:SEGMENT_OVERHEAD])
        headers = bytes(body[SEGMENT_OVERHEAD : SEGMENT_OVERHEAD + header_len])
        vnet = vn.parse_vnet(raw)
        size = vnet.gso_size
        try:
            plan = vn.plan_tcp_segments(vnet, headers + bytes(1))
        except RemoteProtocolError as error:
            raise DatagramError(DatagramDrop.BAD_BODY, f"super-frame {sid}: {error}") from None
        if plan.header_len != header_len or header_len + (count - 1) * size >= plan.max_size:
            raise DatagramError(
                DatagramDrop.BAD_BODY, f"super-frame {sid}: L={header_len}, {count}x{size}"
            )
        if count == 1:
            if len(body) - SEGMENT_OVERHEAD - header_len > size:
                raise DatagramError(DatagramDrop.INCONSISTENT, f"super-frame {sid} oversized")
            return None
        partial = _Partial(count, now, headers, vnet, raw)
        self._partials[sid] = partial
        return partial

    def _drop(self, sid: int) -> None:
        self._partials.pop(sid, None)
        self._inconsistent += 1

    def _finalize(self, upto: int | None) -> list[tuple[Buffer, Buffer]]:
        """Flush every pending super-frame not newer than ``upto`` (all for None), oldest first;
        ``upto`` becomes the newest id handled."""
        out: list[tuple[Buffer, Buffer]] = []
        if self._partials:
            ids = sorted(
                (s for s in self._partials if upto is None or not _newer(s, upto)),
                key=_serial_key,
            )
            for sid in ids:
                out += self._runs(self._partials.pop(sid))
        if upto is not None and (self._floor is None or _newer(upto, self._floor)):
            self._floor = upto
        return out

    def _runs(self, partial: _Partial) -> list[tuple[Buffer, Buffer]]:
        out: list[tuple[Buffer, Buffer]] = []
        payloads = partial.payloads
        count = partial.count
        i = 0
        while i < count:
            if payloads[i] is None:
                i += 1
                continue
            j = i + 1
            while j < count and payloads[j] is not None:
                j += 1
            run: list[memoryview] = payloads[i:j]  # type: ignore[assignment]
            out.append(vn.rebuild(partial.vnet, partial.headers, i, run, j == count, count))
            i = j
        self._flushed += 1
        self._run_count += len(out)
        self._lost += count - partial.received
        return out


MAX_REASSEMBLERS = 1024
"""Origins with a reassembler at once: a backstop, as only origins the routes know (and that
come from the right neighbour) get one; each holds at most ``max_partial`` super-frames."""

IDLE_AFTER = 60.0
"""Seconds without a segment after which an origin's reassembler is forgotten."""


class ReassemblyTable:
    """One :class:`Reassembler` per origin peer, capped and expiring; pure (``now`` passed in).

    Remembers which ones hold pending super-frames, so the receive loop's frequent flush looks
    only at those, however many origins there are.
    """

    def __init__(
        self,
        *,
        limit: int = MAX_REASSEMBLERS,
        idle_after: float = IDLE_AFTER,
        max_partial: int = 4,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._idle_after = idle_after
        self._max_partial = max_partial
        self._entries: dict[int, Reassembler] = {}
        self._used: dict[int, float] = {}
        self._pending: set[int] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, origin: int, now: float) -> Reassembler | None:
        """``origin``'s reassembler, made if there is room (None: every one in the full table
        is mid-super-frame). Call :meth:`touched` after adding to it."""
        reassembler = self._entries.get(origin)
        if reassembler is None:
            if len(self._entries) >= self._limit and not self._evict():
                return None
            reassembler = self._entries[origin] = Reassembler(max_partial=self._max_partial)
        self._used[origin] = now
        return reassembler

    def complete(self, origin: int, sid: int, now: float) -> list[tuple[Buffer, Buffer]] | None:
        """:meth:`Reassembler.complete` for ``origin``'s (made if need be; None also when the
        table is full of reassemblers mid-super-frame)."""
        reassembler = self.get(origin, now)
        if reassembler is None:
            return None
        out = reassembler.complete(sid)
        if out and not reassembler.pending():
            self._pending.discard(origin)
        return out

    def touched(self, origin: int) -> None:
        """Segments were added to ``origin``'s reassembler: note whether it waits for more."""
        reassembler = self._entries.get(origin)
        if reassembler is not None and reassembler.pending():
            self._pending.add(origin)

    def pending(self) -> bool:
        """Whether any super-frame waits for segments; while one does, call :meth:`flush`."""
        return bool(self._pending)

    def flush(self, now: float, older_than: float) -> list[tuple[int, list[tuple[Buffer, Buffer]]]]:
        """:meth:`Reassembler.flush` on the reassemblers with pending super-frames only:
        (origin, frames) for each that delivered something."""
        out: list[tuple[int, list[tuple[Buffer, Buffer]]]] = []
        for origin in list(self._pending):
            reassembler = self._entries[origin]
            frames = reassembler.flush(now, older_than)
            if not reassembler.pending():
                self._pending.discard(origin)
            if frames:
                out.append((origin, frames))
        return out

    def expire(
        self, now: float, known: Container[int]
    ) -> list[tuple[int, list[tuple[Buffer, Buffer]]]]:
        """Forget the reassemblers of origins that are no longer ``known`` or idle for
        ``idle_after``; what they still held comes back, as (origin, frames), for a known
        origin only."""
        cutoff = now - self._idle_after
        out: list[tuple[int, list[tuple[Buffer, Buffer]]]] = []
        for origin in [o for o, used in self._used.items() if used < cutoff or o not in known]:
            frames = self._remove(origin).flush_all()
            if frames and origin in known:
                out.append((origin, frames))
        return out

    def _evict(self) -> bool:
        """Room for one more: the least recently used reassembler with nothing pending goes
        (it loses only its memory of which super-frames were late)."""
        idle = [(used, o) for o, used in self._used.items() if o not in self._pending]
        if not idle:
            return False
        self._remove(min(idle)[1])
        return True

    def _remove(self, origin: int) -> Reassembler:
        del self._used[origin]
        self._pending.discard(origin)
        return self._entries.pop(origin)
