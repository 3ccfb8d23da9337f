"""A gossip payload's array of cached item encodings is what msgpack itself would write."""

from __future__ import annotations

import msgpack
import pytest

from meshnet.gossip.payload import pack_array


@pytest.mark.parametrize("count", [0, 1, 15, 16, 65_535, 65_536])
def test_pack_array_writes_msgpack_headers_of_every_size(count: int) -> None:
    items = [[n, "x"] for n in range(count)]
    packed = pack_array([msgpack.packb(item) for item in items])
    assert packed == msgpack.packb(items)
