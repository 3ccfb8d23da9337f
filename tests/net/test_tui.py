"""/report, /metrics and `meshnet tui` against the routers of a real lab."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshnet.api.client import ApiClient
from tests.net.conftest import can_ping, ns_run
from tests.net.test_mesh import api, wait_for


@pytest.fixture(autouse=True)
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHNET_HEARTBEAT_INTERVAL", "1")


def metrics(client: ApiClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics through the parser Prometheus itself would use."""
    import httpx

    transport = httpx.HTTPTransport(uds=str(client.socket_path))
    with httpx.Client(transport=transport, timeout=10) as http:
        text = http.get("http://meshnet/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sent_to(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], nick: str) -> float:
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "meshnet_dataplane_bytes_total"
        and ("nickname", nick) in labels
        and ("direction", "sent") in labels
    )


def test_report_and_metrics_show_the_lab_and_count_traffic(make_lab: Any) -> None:
    state = make_lab("line", hosts=3, containers=1)
    h1 = api(state, "h1")
    # Known is not yet routed: h3's entry may come before the entry that proves h2-h3 both ways.
    wait_for(
        lambda: [p["reachable"] for p in h1.get("/report")["peers"]] == [True] * 3,
        what="h1 knows and reaches every peer",
    )
    report = h1.get("/report")
    assert report["router"]["nickname"] == "h1"
    peers = {p["nickname"]: p for p in report["peers"]}
    assert peers["h3"]["via"] == ["h2"]
    assert [c["nickname"] for c in report["connections"] if c["state"] == "established"] == ["h2"]
    assert report["dataplane"]["paths"]
    assert [c["namespace"] for c in report["containers"]] == [
        c["namespace"] for c in state["containers"] if c["host"] == "h1"
    ]
    assert report["ipam"] is not None and report["dns"] is not None

    containers = {c["host"]: c for c in state["containers"]}
    source, target = containers["h1"]["namespace"], containers["h3"]["addresses"][0].split("/")[0]
    wait_for(lambda: can_ping(source, target), what="h1-c1 reaches h3-c1")
    before = metrics(h1)
    assert before[("meshnet_peers", ())] == 3
    assert before[("meshnet_connections", (("state", "established"),))] == 1
    tx_before = h1.get("/report")["containers"][0]["tx_bytes"]
    pinged = ns_run(source, "ping", "-c", "5", "-i", "0.2", "-s", "1000", target)
    assert pinged.returncode == 0, pinged.stdout
    after = metrics(h1)
    # Everything from h1 to h3 goes to h2, the next hop: at least the pings' 5 x 1000 bytes
    # (heartbeats in that second add far less).
    assert sent_to(after, "h2") >= sent_to(before, "h2") + 5000
    assert h1.get("/report")["containers"][0]["tx_bytes"] >= tx_before + 5000

    # The socket is root's alone: another user cannot even connect.
    socket_path = h1.socket_path
    assert socket_path.stat().st_mode & 0o777 == 0o600
    refused = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-sS",
            "--unix-socket",
            str(socket_path),
            "http://meshnet/report",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert refused.returncode != 0 and not refused.stdout
    # ... and it is not on the network: the router listens on TCP only for peers (6783) and
    # for DNS (53, on its overlay address).
    host = next(h for h in state["hosts"] if h["name"] == "h1")
    listening = ns_run(host["namespace"], "ss", "-ltnH").stdout.splitlines()
    ports = {line.split()[3].rsplit(":", 1)[1] for line in listening}
    assert ports <= {"6783", "53"}, listening


def tmux(*args: str) -> str:
    return subprocess.run(
        ["tmux", *args], capture_output=True, text=True, check=True, timeout=10
    ).stdout


def test_tui_in_tmux_shows_the_peers_and_comes_back_after_a_restart(make_lab: Any) -> None:
    from meshnet.lab import lab as lablib

    state = make_lab("line", hosts=3, containers=1)
    host = next(h for h in state["hosts"] if h["name"] == "h1")
    h1 = api(state, "h1")
    wait_for(lambda: len(h1.get("/status/peers")) == 3, what="h1 knows every peer")
    session = f"mn-tui-{uuid.uuid4().hex[:8]}"
    command = (
        f"MESHNET_API_SOCKET={host['api_socket']} {sys.executable} -m meshnet tui --interval 0.5"
    )
    tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", command)
    try:

        def screen() -> str:
            return tmux("capture-pane", "-p", "-t", session)

        def screen_with(*words: str) -> str | None:
            text = screen()
            return text if all(w in text for w in words) else None

        shown = wait_for(
            lambda: screen_with("relayed via h2", "established"),
            timeout=30,
            what="the TUI to show h1's peers",
        )
        assert "meshnet · h1" in shown and "● live · 3 peers" in shown
        capture = Path(os.environ.get("MESHNET_TUI_CAPTURE", "/nonexistent/x"))
        if capture.parent.is_dir():  # how the README's screenshot is made
            capture.write_text(shown)

        h1.post("/stop")
        wait_for(lambda: "not connected" in screen(), timeout=20, what="the TUI to notice")
        lablib.start_router(state["name"], "h1")
        wait_for(lambda: "● live" in screen(), timeout=30, what="the TUI to reconnect")
        wait_for(lambda: "relayed via h2" in screen(), timeout=30, what="the peers again")
        tmux("send-keys", "-t", session, "3")
        log = wait_for(
            lambda: screen_with("daemon gone", "connected to"),
            timeout=10,
            what="the event log",
        )
        assert log.count("connected to") >= 2, log
        tmux("send-keys", "-t", session, "q")
        time.sleep(0.5)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, check=False)
