"""Atomic state files: the old content or the new, never a torn file or a stray temporary."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from unittest import mock

import pytest

from meshnet.statefile import set_aside, write_atomically


def test_writes_bytes_and_text_creating_the_directory(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "state"
    write_atomically(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    write_atomically(target, "peer\n")
    assert target.read_text() == "peer\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(target.parent) == ["state"]


def test_a_failed_rename_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state"
    write_atomically(target, b"old")
    with (
        mock.patch("meshnet.statefile.os.replace", side_effect=OSError("disk gone")),
        pytest.raises(OSError, match="disk gone"),
    ):
        write_atomically(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state"]


def test_a_corrupt_file_is_set_aside_never_over_an_earlier_one(tmp_path: Path) -> None:
    target = tmp_path / "dns-records.msgpack"
    target.write_bytes(b"first")
    first = set_aside(target, now=0)
    assert first.name == "dns-records.msgpack.corrupt-19700101T000000Z"
    target.write_bytes(b"second")
    second = set_aside(target, now=0)
    assert second.name == "dns-records.msgpack.corrupt-19700101T000000Z-2"
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second")
    assert not target.exists()
