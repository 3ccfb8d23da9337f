"""Peer names, their persistence, and Identity's own validation."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnet.errors import UserError
from meshnet.gossip.identity import (
    MAX_UID,
    PEER_NAME_FILE,
    Identity,
    format_peer_name,
    load_or_create_peer_name,
    new_peer_name,
    new_uid,
    parse_peer_name,
    printable,
)
from meshnet.gossip.messages import MAX_PEER_NAME


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def constant_rng(data: bytes) -> Callable[[int], bytes]:
    def rng(count: int) -> bytes:
        assert count == len(data)
        return data

    return rng


@given(st.integers(0, MAX_PEER_NAME))
def test_format_parse_round_trip(name: int) -> None:
    text = format_peer_name(name)
    assert len(text) == 17
    assert parse_peer_name(text) == name
    assert parse_peer_name(text.upper()) == name


def test_format_examples() -> None:
    assert format_peer_name(0) == "00:00:00:00:00:00"
    assert format_peer_name(0xAABBCCDDEEFF) == "aa:bb:cc:dd:ee:ff"
    assert parse_peer_name("AA:bb:CC:dd:EE:ff") == 0xAABBCCDDEEFF


@pytest.mark.parametrize("name", [-1, MAX_PEER_NAME + 1, True])
def test_format_rejects_out_of_range(name: int) -> None:
    with pytest.raises(ValueError):
        format_peer_name(name)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "aa:bb:cc:dd:ee",
        "aa:bb:cc:dd:ee:ff:00",
        "aa-bb-cc-dd-ee-ff",
        "aabbccddeeff",
        "aa:bb:cc:dd:ee:fg",
        "a:bb:cc:dd:ee:ff",
        " aa:bb:cc:dd:ee:ff",
        "aa:bb:cc:dd:ee:ff\n",
        "\u0660\u0660:bb:cc:dd:ee:ff",  # Arabic-Indic digits: int() takes them, we do not
    ],
)
def test_parse_rejects_bad_text(text: str) -> None:
    with pytest.raises(UserError, match="bad peer name"):
        parse_peer_name(text)


@given(st.text(max_size=30))
def test_parse_arbitrary_text_is_a_name_or_user_error(text: str) -> None:
    try:
        name = parse_peer_name(text)
    except UserError:
        return
    assert format_peer_name(name) == text.lower()


@given(st.binary(min_size=6, max_size=6))
def test_new_peer_name_is_local_unicast(data: bytes) -> None:
    name = new_peer_name(constant_rng(data))
    assert 0 <= name <= MAX_PEER_NAME
    first_octet = name >> 40
    assert first_octet & 0x02, "locally administered bit set"
    assert not first_octet & 0x01, "multicast bit clear"
    assert name & ((1 << 40) - 1) == int.from_bytes(data[1:], "big")


@given(st.binary(min_size=8, max_size=8))
def test_new_uid_uses_64_bits(data: bytes) -> None:
    assert new_uid(constant_rng(data)) == int.from_bytes(data, "big")
    assert 0 <= new_uid(constant_rng(data)) <= MAX_UID


def test_short_rng_is_refused() -> None:
    with pytest.raises(ValueError):
        new_peer_name(lambda n: b"\x00")


def test_load_or_create_persists(tmp_path: Path) -> None:
    state = tmp_path / "state" / "nested"
    first = load_or_create_peer_name(state, seeded_rng(1))
    second = load_or_create_peer_name(state, seeded_rng(2))
    assert first == second
    assert (state / PEER_NAME_FILE).read_text() == format_peer_name(first) + "\n"
    assert sorted(p.name for p in state.iterdir()) == [PEER_NAME_FILE], "no temp files left"


def test_load_accepts_hand_written_file(tmp_path: Path) -> None:
    (tmp_path / PEER_NAME_FILE).write_text("  0A:00:00:00:00:01  \n")
    assert load_or_create_peer_name(tmp_path, seeded_rng(1)) == 0x0A0000000001


def test_different_seeds_give_different_names(tmp_path: Path) -> None:
    a = load_or_create_peer_name(tmp_path / "a", seeded_rng(1))
    b = load_or_create_peer_name(tmp_path / "b", seeded_rng(2))
    assert a != b


@pytest.mark.parametrize(
    "content", [b"", b"garbage\n", b"aa:bb:cc:dd:ee\n", b"\xff\xfe\x00", b"aa:bb:cc:dd:ee:ff:00"]
)
def test_corrupt_file_is_user_error_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / PEER_NAME_FILE
    path.write_bytes(content)
    with pytest.raises(UserError, match="corrupt peer name file") as info:
        load_or_create_peer_name(tmp_path, seeded_rng(1))
    assert str(path) in str(info.value)
    assert path.read_bytes() == content, "a corrupt file is left for the user to inspect"


def test_unreadable_state_is_user_error(tmp_path: Path) -> None:
    # A directory where the file should be: reading fails with an OSError that is not ENOENT.
    (tmp_path / PEER_NAME_FILE).mkdir()
    with pytest.raises(UserError, match="peer name file"):
        load_or_create_peer_name(tmp_path, seeded_rng(1))


def test_identity_validates_itself() -> None:
    identity = Identity(0x0A0000000001, "host-1", 7)
    assert str(identity) == "0a:00:00:00:00:01(host-1)"
    with pytest.raises(UserError):
        Identity(0x0A0000000001, "", 7)
    with pytest.raises(UserError):
        Identity(0x0A0000000001, "x" * 65, 7)
    with pytest.raises(UserError):
        Identity(0x0A0000000001, "two\nlines", 7)
    with pytest.raises(UserError):
        Identity(MAX_PEER_NAME + 1, "host", 7)
    with pytest.raises(UserError):
        Identity(1, "host", MAX_UID + 1)
    with pytest.raises(UserError):
        Identity(1, "host", -1)


def test_identity_is_a_frozen_value() -> None:
    assert Identity(1, "a", 2) == Identity(1, "a", 2)
    assert hash(Identity(1, "a", 2)) == hash(Identity(1, "a", 2))
    with pytest.raises(AttributeError):
        Identity(1, "a", 2).name = 3  # type: ignore[misc]


def test_printable_replaces_what_a_terminal_would_act_on_and_caps_the_length() -> None:
    assert printable("h1") == "h1"
    assert (
        printable("caf\u00e9 \u6771\u4eac") == "caf\u00e9 \u6771\u4eac"
    )  # printable unicode stays
    assert printable("a\x1b[2Jb\r\nc\u202ed\x00") == "a\ufffd[2Jb\ufffd\ufffdc\ufffdd\ufffd"
    assert printable("y" * 500) == "y" * 64
    assert printable("\x07" * 10, limit=3) == "\ufffd" * 3
