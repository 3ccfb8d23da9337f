"""SVG screenshots of every panel at 80x24, fed the recorded stream (pytest-textual-snapshot).

After a deliberate change to the look, review the new SVGs and accept them with
`pytest tests/unit/test_tui_snapshots.py --snapshot-update`. The event log shows wall-clock
times, so it is covered by the pilot tests in test_tui.py instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from meshnet.tui.app import MeshnetTui
from meshnet.tui.source import RecordedSource
from tests.unit.test_tui import recording

pytest.importorskip("pytest_textual_snapshot")

SnapCompare = Callable[..., bool]


def recorded_app() -> MeshnetTui:
    return MeshnetTui(RecordedSource(recording()), retry=3600)


async def until_played(pilot: Pilot[Any]) -> None:
    """Every recorded snapshot shown and the end of the recording noticed: a steady screen."""
    app = pilot.app
    assert isinstance(app, MeshnetTui)
    while app.snapshots_seen < len(recording()) or app.connected:
        await pilot.pause(0.02)
    await pilot.pause()


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param((), id="peers"),
        pytest.param(("2",), id="flows"),
        pytest.param(("4",), id="ipam"),
        pytest.param(("5",), id="dns"),
        pytest.param(("6",), id="topology"),
        pytest.param(("slash", "h", "3", "enter"), id="filtered"),
        pytest.param(("question_mark",), id="help"),
    ],
)
def test_panel(snap_compare: SnapCompare, keys: tuple[str, ...]) -> None:
    assert snap_compare(recorded_app(), press=keys, terminal_size=(80, 24), run_before=until_played)
