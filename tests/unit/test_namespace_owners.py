"""IPAM's keys for namespaces: a cookie key per namespace for good, and which keys to let go."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnet.node.namespace_owners import (
    ByCookie,
    ByInode,
    NamespaceId,
    Namespaces,
    Release,
    Rename,
    SeenNamespace,
    collect,
    owner_id,
    parse_owner,
)

BOOT, EARLIER = "7e28a8a38990", "0c4f21d2aa17"
INODE = (4, 4026532174)


@given(
    cookie=st.integers(min_value=1, max_value=2**64 - 1),
    ifname=st.sampled_from(["ethwe", "eth1", "net1", "ethwe2"]),
)
def test_a_cookie_key_names_its_namespace_and_interface(cookie: int, ifname: str) -> None:
    namespace = NamespaceId(cookie, BOOT)
    key = owner_id(namespace, ifname)
    assert parse_owner(key) == ByCookie(namespace, ifname)
    assert key.endswith(f"/{ifname}") == (ifname != "ethwe")


def test_inode_keys_from_before_cookies_still_read() -> None:
    assert parse_owner("netns:4:4026532174") == ByInode(INODE, "ethwe")
    assert parse_owner("netns:4:4026532174/eth1") == ByInode(INODE, "eth1")


@pytest.mark.parametrize(
    "key", ["docker:abc", "cni:net:c:eth0", "dns:aa:bb", "netns:abc", "netns:", "netns:1@", "x"]
)
def test_other_keys_are_no_namespaces(key: str) -> None:
    assert parse_owner(key) is None


def seen(cookie: int, inode: tuple[int, int] = INODE, **attached: list[str]) -> SeenNamespace:
    return SeenNamespace(NamespaceId(cookie, BOOT), inode, attached)


def test_a_new_namespace_with_a_dead_ones_inode_gets_a_key_of_its_own() -> None:
    """The bug this module exists for: the inode comes back at once, the cookie never."""
    dead, reborn = NamespaceId(10878, BOOT), NamespaceId(13553, BOOT)
    assert owner_id(dead) != owner_id(reborn)
    held = {owner_id(dead): ["10.32.0.1"]}
    now = Namespaces((seen(13553),), BOOT)  # the new one holds the old inode
    assert collect(held, now) == [Release(owner_id(dead), "its namespace is gone")]


def test_a_live_namespaces_key_is_kept() -> None:
    held = {owner_id(NamespaceId(7, BOOT)): ["10.32.0.1"], "docker:abc": ["10.32.0.2"]}
    assert collect(held, Namespaces((seen(7),), BOOT)) == []


def test_a_namespace_out_of_sight_keeps_everything_of_this_boot() -> None:
    """A bridge port leading to a namespace no file names: that namespace lives, and may be
    any of the keys not seen. Keys of an earlier boot go regardless."""
    this, earlier = owner_id(NamespaceId(8, BOOT)), owner_id(NamespaceId(8, EARLIER), "eth1")
    held = {this: ["10.32.0.1"], earlier: ["10.32.0.2"]}
    blind = Namespaces((seen(7),), BOOT, unseen=("vethwe0123456789",))
    assert not blind.complete
    assert collect(held, blind) == [Release(earlier, "its namespace was of an earlier boot")]
    assert collect(held, Namespaces((seen(7),), BOOT)) == [
        Release(earlier, "its namespace was of an earlier boot"),
        Release(this, "its namespace is gone"),
    ]


def test_an_inode_key_moves_to_its_namespaces_cookie_key_when_that_carries_its_addresses() -> None:
    legacy, second = "netns:4:4026532174", "netns:4:4026532174/eth1"
    held = {legacy: ["10.32.0.1", "fd00::1"], second: ["10.40.0.1"]}
    alive = Namespaces((seen(42, ethwe=["10.32.0.1/12"], eth1=["10.40.0.1/24"]),), BOOT)
    assert collect(held, alive) == [
        Rename(legacy, owner_id(NamespaceId(42, BOOT))),
        Rename(second, owner_id(NamespaceId(42, BOOT), "eth1")),
    ]


def test_an_inode_key_is_released_when_its_inode_went_to_another_namespace_or_nowhere() -> None:
    legacy = "netns:4:4026532174"
    held = {legacy: ["10.32.0.1"]}
    reused = Namespaces((seen(43, ethwe=["10.32.0.9/12"]),), BOOT)
    assert collect(held, reused) == [
        Release(legacy, "the namespace with its inode does not carry them")
    ]
    unplugged = Namespaces((seen(43),), BOOT, unseen=("vethwe0123456789",))
    assert collect(held, unplugged) == [
        Release(legacy, "the namespace with its inode does not carry them")
    ]
    gone = Namespaces((seen(44, inode=(4, 4026532999)),), BOOT)
    assert collect(held, gone) == [Release(legacy, "its namespace is gone")]
    out_of_sight = Namespaces(gone.seen, BOOT, unseen=("vethwe0123456789",))
    assert collect(held, out_of_sight) == []
