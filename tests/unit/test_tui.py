"""The TUI: its model (rates, rows, events from snapshots) and the app, fed a recorded stream.

The recording (data/tui_snapshots.jsonl) is eight /report snapshots of h1 in a 3-host line lab,
one a second, while a container on h1 pinged one on h3 (relayed via h2).
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

from textual.widgets import DataTable, RichLog, Static, Tree

from meshnet.tui.app import HelpScreen, MeshnetTui
from meshnet.tui.model import (
    Model,
    describe_path,
    format_rate,
    matches,
    peer_rows,
    rate,
    route_tree,
    sparkline,
)
from meshnet.tui.source import ApiSource, RecordedSource, load_recording

RECORDING = Path(__file__).parent / "data" / "tui_snapshots.jsonl"


def recording() -> list[dict[str, Any]]:
    return load_recording(RECORDING)


def snapshot(time: float, sent: int, received: int, container_tx: int = 0) -> dict[str, Any]:
    return {
        "time": time,
        "router": {"name": "aa", "nickname": "h1", "peers": 2, "connections": {}},
        "peers": [
            {"name": "aa", "nickname": "h1", "local": True, "reachable": True, "via": []},
            {"name": "bb", "nickname": "h2", "reachable": True, "via": []},
        ],
        "connections": [],
        "dataplane": {
            "paths": {},
            "forwarding": {
                "sent": {"bb": {"bytes": sent, "datagrams": 1}},
                "received": {"bb": {"bytes": received, "datagrams": 1}},
            },
        },
        "containers": [
            {"namespace": "c1", "ifname": "ethwe", "tx_bytes": container_tx, "rx_bytes": 0}
        ],
    }


# --- the model -----------------------------------------------------------------------------------


def test_rates_come_from_counter_differences() -> None:
    model = Model()
    model.update(snapshot(10.0, 0, 0))
    assert model.flows["peer:bb"].tx_rate == 0 and not model.flows["peer:bb"].tx_history
    model.update(snapshot(11.0, 1000, 500, container_tx=250))
    model.update(snapshot(13.0, 5000, 500, container_tx=250))
    peer = model.flows["peer:bb"]
    assert peer.label == "h2"
    assert list(peer.tx_history) == [1000.0, 2000.0]
    assert list(peer.rx_history) == [500.0, 0.0]
    container = model.flows["container:c1/ethwe"]
    assert container.kind == "container" and list(container.tx_history) == [250.0, 0.0]
    assert [f.kind for f in model.flow_rows()] == ["peer", "container"]


def test_a_counter_that_restarts_is_not_a_negative_rate() -> None:
    assert rate(5000, 300, 1.0) == 300.0
    model = Model()
    model.update(snapshot(1.0, 5000, 0))
    model.update(snapshot(2.0, 100, 0))
    assert model.flows["peer:bb"].tx_rate == 100.0


def test_history_is_bounded_and_gone_flows_disappear() -> None:
    model = Model(history=3)
    for t in range(6):
        model.update(snapshot(float(t), t * 100, 0))
    assert list(model.flows["peer:bb"].tx_history) == [100.0, 100.0, 100.0]
    gone = snapshot(7.0, 700, 0)
    gone["dataplane"]["forwarding"] = {"sent": {}, "received": {}}
    model.update(gone)
    assert "peer:bb" not in model.flows


def test_fastdp_traffic_is_one_flow_counted_by_the_vxlan_device() -> None:
    model = Model()
    for t, total in ((1.0, 0), (2.0, 4000)):
        snap = snapshot(t, 0, 0)
        snap["dataplane"]["fastdp"] = {"traffic": {"tx_bytes": total, "rx_bytes": total // 2}}
        model.update(snap)
    flow = model.flows["fastdp"]
    assert flow.kind == "peer" and "fastdp" in flow.label
    assert (flow.tx_rate, flow.rx_rate) == (4000.0, 2000.0)


def test_peer_rows_from_the_recording() -> None:
    rows = {r.nickname: r for r in peer_rows(recording()[-1])}
    assert rows["h1"].local and rows["h1"].state == "self"
    assert rows["h2"].state == "established" and rows["h2"].path == "sleeve"
    assert rows["h2"].address.startswith("172.31.") and ":" not in rows["h2"].address
    assert rows["h2"].rtt.endswith(" ms")
    assert rows["h3"].path == "relayed via h2"
    assert peer_rows(recording()[-1])[0].nickname == "h1"  # self first


def test_describe_path() -> None:
    assert describe_path({"reachable": False}, None) == "unreachable"
    assert describe_path({"reachable": True, "via": ["x", "y"]}, None) == "relayed via x, y"
    assert describe_path({"reachable": True, "via": []}, {"state": "probing"}) == "sleeve (probing)"
    established = {"state": "established", "kind": "fastdp"}
    assert describe_path({"reachable": True, "via": []}, established) == "fastdp"
    punched = {"state": "established", "kind": "sleeve", "punched": True}
    assert describe_path({"reachable": True, "via": []}, punched) == "sleeve, punched"


def test_sparkline_and_units() -> None:
    assert sparkline([0, 1, 2, 4, 8], 5) == "▁▂▃▅█"
    assert sparkline([0, 0], 4) == "▁▁"
    assert sparkline([1.0] * 50, 10) == "█" * 10
    assert sparkline([], 10) == ""
    assert format_rate(0) == "0 bit/s"
    assert format_rate(125) == "1.0 kbit/s"
    assert format_rate(2.5e6) == "20.0 Mbit/s"
    assert matches(["h3", "relayed via h2"], "RELAYED h3")
    assert not matches(["h3"], "h3 h4")


# --- the app -------------------------------------------------------------------------------------


def rows(app: MeshnetTui, table: str) -> list[list[str]]:
    widget = app.query_one(table, DataTable)
    return [[str(c) for c in widget.get_row_at(i)] for i in range(widget.row_count)]


def status_text(app: MeshnetTui) -> str:
    return str(app.query_one("#status", Static).render())


def test_app_shows_peers_flows_ipam_and_dns_at_80x24() -> None:
    async def scenario() -> None:
        source = RecordedSource(recording())
        app = MeshnetTui(source, retry=60)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            while app.snapshots_seen < len(source.recorded):
                await pilot.pause(0.05)
            await pilot.pause()
            peers = rows(app, "#peers-table")
            assert [r[0] for r in peers] == ["h1", "h2", "h3"]
            assert peers[2][3] == "relayed via h2"
            assert app.title.startswith("meshnet · h1 (")
            # The recording is over: the app says the daemon is gone, and keeps the last view.
            assert "not connected: end of the recording" in status_text(app)
            assert app.query_one("#status").region.width == 80  # fits: nothing scrolls
            await pilot.press("2")
            flows = rows(app, "#flows-table")
            assert flows[0][0] == "h2" and flows[1][0].startswith("▸ ")
            sparks = app.query_one("#flows-table", DataTable).get_row_at(0)[2]
            assert set(str(sparks)) - {"▁"}, "the ping shows in the sparkline"
            await pilot.press("4")
            ipam = rows(app, "#ipam-table")
            assert len(ipam) == 3 and any(r[0] == "h1 (here)" for r in ipam)
            await pilot.press("5")
            dns = rows(app, "#dns-table")
            assert {r[0] for r in dns} == {f"h{i}-c1.meshnet.local." for i in (1, 2, 3)}
            screen = app.export_screenshot()
            assert "meshnet.local" in screen

    asyncio.run(scenario())


def test_filter_and_help() -> None:
    async def scenario() -> None:
        app = MeshnetTui(RecordedSource(recording()[:2]), retry=60)
        async with app.run_test(size=(80, 24)) as pilot:
            while app.snapshots_seen < 2:
                await pilot.pause(0.05)
            await pilot.press("slash", "h", "3")
            assert [r[0] for r in rows(app, "#peers-table")] == ["h3"]
            assert "filter: h3" in status_text(app)
            await pilot.press("enter", "q")  # enter leaves the box: q is a key again
            assert app.is_running is False

    asyncio.run(scenario())

    async def help_and_escape() -> None:
        app = MeshnetTui(RecordedSource(recording()[:2]), retry=60)
        async with app.run_test(size=(80, 24)) as pilot:
            while app.snapshots_seen < 2:
                await pilot.pause(0.05)
            await pilot.press("slash", "h", "3", "escape")
            assert len(rows(app, "#peers-table")) == 3
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            help_text = str(app.screen.query_one("#help-text", Static).render())
            assert "filter" in help_text and "reconnect" in help_text
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)

    asyncio.run(help_and_escape())


def test_events_are_logged_and_the_app_reconnects() -> None:
    first, second = recording()[:2]
    later = copy.deepcopy(second)
    later["time"] += 1
    later["peers"] = [p for p in later["peers"] if p["nickname"] != "h3"]

    async def scenario() -> None:
        source = RecordedSource([first, second, later], delay=0.01)
        app = MeshnetTui(source, retry=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            with_timeout = asyncio.get_running_loop().time() + 10
            while source.plays < 3 and asyncio.get_running_loop().time() < with_timeout:
                await pilot.pause(0.05)
            assert source.plays >= 3, "it keeps trying after the source goes away"
            await pilot.press("question_mark")  # updates go on under the help screen
            plays = source.plays
            while source.plays < plays + 2:
                await pilot.pause(0.05)
            await pilot.press("escape", "3")
            log = app.query_one("#event-log", RichLog)
            text = "\n".join(str(line.text) for line in log.lines)
            assert "peer h3" in text and "left" in text
            assert "daemon gone: end of the recording" in text
            assert text.count("connected to recording") >= 2

    asyncio.run(scenario())


def test_no_daemon_is_said_plainly(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = MeshnetTui(ApiSource(tmp_path / "absent.sock"), retry=60)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.1)
            assert "no API socket at" in status_text(app)
            assert app.query_one("#status").has_class("down")

    asyncio.run(scenario())


def test_route_tree_puts_each_peer_under_its_last_hop() -> None:
    root, unreachable = route_tree(recording()[-1])
    assert root is not None and root.nickname == "h1" and unreachable == []
    assert [c.nickname for c in root.children] == ["h2"]
    (h2,) = root.children
    assert h2.detail.startswith("sleeve · ") and h2.detail.endswith("links: h1 h3")
    assert [c.nickname for c in h2.children] == ["h3"]
    assert h2.children[0].detail.startswith("relayed via h2")
    gone = copy.deepcopy(recording()[-1])
    for p in gone["peers"]:
        if p["nickname"] == "h3":
            p["reachable"], p["via"] = False, []
    root, unreachable = route_tree(gone)
    assert root is not None and unreachable == ["h3"] and not root.children[0].children
    assert route_tree({}) == (None, [])


def test_topology_panel_draws_the_route_tree() -> None:
    async def scenario() -> None:
        app = MeshnetTui(RecordedSource(recording()[:2]), retry=60)
        async with app.run_test(size=(80, 24)) as pilot:
            while app.snapshots_seen < 2:
                await pilot.pause(0.05)
            await pilot.press("6")
            await pilot.pause()
            tree = app.query_one("#topology-tree", Tree)
            assert str(tree.root.label).startswith("h1 (this host)")
            (h2,) = tree.root.children
            assert str(h2.label).startswith("h2 · sleeve")
            assert [str(n.label).split(" ")[0] for n in h2.children] == ["h3"]
            assert "relayed via h2" in str(h2.children[0].label)

    asyncio.run(scenario())
