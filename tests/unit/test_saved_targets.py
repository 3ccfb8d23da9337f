"""What `connect` and `forget` said survives a restart: the pure value and its file."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnet.gossip import saved_targets
from meshnet.gossip.saved_targets import SavedTargets

A, B, C = "10.0.0.1:6783", "10.0.0.2:6783", "10.0.0.3:6783"


def test_nothing_said_dials_the_launch_peers() -> None:
    assert SavedTargets().resumed([A, B, A]) == (A, B)


def test_connected_peers_come_back_after_the_launch_peers() -> None:
    saved = SavedTargets().connected([C])
    assert saved.resumed([A, B]) == (A, B, C)
    assert saved.resumed([C]) == (C,)  # given both ways: dialled once


def test_a_forgotten_launch_peer_stays_forgotten() -> None:
    """A systemd unit launches with the same peers every time."""
    saved = SavedTargets().connected([C]).forgot([A, C])
    assert saved.resumed([A, B]) == (B,)
    assert saved.connected([A]).resumed([A, B]) == (A, B)  # connected again: back


def test_replace_makes_the_given_ones_the_targets() -> None:
    saved = SavedTargets().connected([C]).replaced(current=[A, B, C], addresses=[B])
    assert saved.resumed([A, B]) == (B,)
    assert SavedTargets().replaced(current=[A], addresses=[]).resumed([A]) == ()


def test_the_file_round_trips_and_empty_means_no_file(tmp_path: Path) -> None:
    saved = SavedTargets().connected([C]).forgot([A])
    saved_targets.save(tmp_path, saved)
    assert (tmp_path / saved_targets.STATE_FILE).stat().st_mode & 0o777 == 0o600
    assert saved_targets.load(tmp_path) == saved
    saved_targets.save(tmp_path, SavedTargets())
    assert not (tmp_path / saved_targets.STATE_FILE).exists()
    assert saved_targets.load(tmp_path) == SavedTargets()


@pytest.mark.parametrize("text", ["{", "[]", '{"added": "x"}', '{"added": [1]}'])
def test_an_unreadable_file_is_set_aside(tmp_path: Path, text: str) -> None:
    (tmp_path / saved_targets.STATE_FILE).write_text(text)
    assert saved_targets.load(tmp_path) == SavedTargets()
    assert [p.name.split(".corrupt-")[0] for p in tmp_path.iterdir()] == ["targets.json"]
    assert not (tmp_path / saved_targets.STATE_FILE).exists()
