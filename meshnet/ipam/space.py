"""One peer's bookkeeping of the addresses it has handed out, inside the ranges it owns.

What the peer owns comes from the ring and is passed in with every call, so the two can never
disagree: ``Space`` only knows which address is held by which container. Addresses are ints,
of one family per ``Space``: only the held addresses are stored, so an IPv6 /64 costs nothing
until it is used, and finding a free address walks the held ones, never the space.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterator, Sequence
from ipaddress import IPv4Network, IPv6Network

Ranges = Sequence[tuple[int, int]]
Subnet = IPv4Network | IPv6Network


def usable(subnet: Subnet) -> tuple[int, int]:
    """``[lo, hi)`` of the addresses a container may get in ``subnet``.

    IPv4: the network and broadcast addresses are left out (except in /31 and /32, which have
    none). IPv6 has no broadcast; its all-zeros address is the subnet-router anycast address
    (RFC 4291 2.6.1), left out likewise (except in /127 and /128, RFC 6164).
    """
    lo = int(subnet.network_address)
    hi = int(subnet.broadcast_address) + 1
    if subnet.version == 6:
        return (lo + 1, hi) if subnet.prefixlen <= 126 else (lo, hi)
    if subnet.prefixlen <= 30:
        return lo + 1, hi - 1
    return lo, hi


def clip(ranges: Ranges, lo: int, hi: int) -> list[tuple[int, int]]:
    """``ranges`` (ascending, disjoint) intersected with ``[lo, hi)``."""
    out = []
    for start, end in ranges:
        s, e = max(start, lo), min(end, hi)
        if s < e:
            out.append((s, e))
    return out


class Space:
    """Which owned address is held by which container; a container may hold several."""

    def __init__(self) -> None:
        self._holder: dict[int, str] = {}
        self._used: list[int] = []  # sorted: finding the lowest free address is a bisect walk
        self._by_container: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self._used)

    def holder(self, address: int) -> str | None:
        return self._holder.get(address)

    def addresses(self, container: str) -> list[int]:
        return list(self._by_container.get(container, ()))

    def allocations(self) -> list[tuple[int, str]]:
        """``(address, container)`` ascending by address."""
        return [(a, self._holder[a]) for a in self._used]

    def used_between(self, lo: int, hi: int) -> int:
        return bisect.bisect_left(self._used, hi) - bisect.bisect_left(self._used, lo)

    def free_runs(self, ranges: Ranges, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """Maximal runs ``[s, e)`` of free addresses in ``ranges`` ∩ ``[lo, hi)``, ascending."""
        for start, end in clip(ranges, lo, hi):
            cursor = start
            i = bisect.bisect_left(self._used, start)
            while i < len(self._used) and self._used[i] < end:
                if self._used[i] > cursor:
                    yield cursor, self._used[i]
                cursor = self._used[i] + 1
                i += 1
            if cursor < end:
                yield cursor, end

    def lowest_free(self, ranges: Ranges, subnet: Subnet) -> int | None:
        lo, hi = usable(subnet)
        return next((s for s, _ in self.free_runs(ranges, lo, hi)), None)

    def largest_free_run(self, ranges: Ranges, subnet: Subnet) -> tuple[int, int] | None:
        lo, hi = usable(subnet)
        best: tuple[int, int] | None = None
        for s, e in self.free_runs(ranges, lo, hi):
            if best is None or e - s > best[1] - best[0]:
                best = (s, e)
        return best

    def allocate(self, container: str, ranges: Ranges, subnet: Subnet) -> int | None:
        """The lowest free address of ``subnet`` in ``ranges``, now held by ``container``."""
        address = self.lowest_free(ranges, subnet)
        if address is not None:
            self.take(container, address)
        return address

    def take(self, container: str, address: int) -> None:
        """Record ``address`` as held by ``container`` (idempotent for the same container)."""
        holder = self._holder.get(address)
        if holder == container:
            return
        if holder is not None:
            raise ValueError(f"address {address} is held by {holder!r}")
        self._holder[address] = container
        bisect.insort(self._used, address)
        self._by_container.setdefault(container, []).append(address)

    def release(self, container: str, only: Collection[int] | None = None) -> list[int]:
        """Free what ``container`` holds (all of it, or those of ``only`` it holds); the
        addresses freed (none if it held none)."""
        held = self._by_container.pop(container, [])
        addresses = held if only is None else [a for a in held if a in only]
        if only is not None and len(addresses) < len(held):
            self._by_container[container] = [a for a in held if a not in only]
        for address in addresses:
            del self._holder[address]
            del self._used[bisect.bisect_left(self._used, address)]
        return sorted(addresses)

    def rename(self, container: str, to: str) -> list[int]:
        """Let ``to`` hold what ``container`` holds (besides what it holds already); the
        addresses moved."""
        moved = self._by_container.pop(container, [])
        for address in moved:
            self._holder[address] = to
        if moved:
            self._by_container.setdefault(to, []).extend(moved)
        return sorted(moved)

    def clear(self) -> None:
        self._holder.clear()
        self._used.clear()
        self._by_container.clear()
