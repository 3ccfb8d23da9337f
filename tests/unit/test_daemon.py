"""The daemon as a user runs it: launch, API, status commands, SIGTERM, and its errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from meshnet.api.client import ApiClient
from meshnet.daemon import _routes_changed as routes_changed_in
from meshnet.errors import UserError
from tests.conftest import run_meshnet
from tests.unit.test_fastdp import route_notification


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    def __init__(self, tmp: Path, port: int) -> None:
        self.env = {
            **os.environ,
            "MESHNET_STATE_DIR": str(tmp / "state"),
            "MESHNET_API_SOCKET": str(tmp / "run" / "api.sock"),
        }
        self.socket = tmp / "run" / "api.sock"
        self.port = port

    def meshnet(self, *args: str) -> subprocess.CompletedProcess[str]:
        # These tests run in the caller's own namespace: never make a bridge or TAP there.
        if args and args[0] == "launch":
            args = (*args, "--no-dataplane")
        return run_meshnet(*args, env=self.env)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, free_port())
    yield d
    if d.socket.exists():
        d.meshnet("stop")


def test_launch_status_connect_forget_stop(daemon: Daemon) -> None:
    launched = daemon.meshnet(
        "launch", "--nickname", "alpha", "--port", str(daemon.port), "127.0.0.1:1"
    )
    assert launched.returncode == 0, launched.stderr
    name = launched.stdout.strip()
    assert len(name.split(":")) == 6
    assert (daemon.socket.stat().st_mode & 0o777) == 0o600
    status = json.loads(daemon.meshnet("status", "--json").stdout)
    assert status["name"] == name and status["nickname"] == "alpha"
    assert status["targets"] == ["127.0.0.1:1"] and not status["encryption"]
    text = daemon.meshnet("status").stdout
    assert f"Name: {name} (alpha)" in text and "Encryption: disabled" in text
    peers = json.loads(daemon.meshnet("status", "peers", "--json").stdout)
    assert [p["nickname"] for p in peers] == ["alpha"] and peers[0]["local"]

    assert daemon.meshnet("connect", "127.0.0.1:2").stdout.strip() == "127.0.0.1:2: added"
    targets = json.loads(daemon.meshnet("status", "targets", "--json").stdout)
    assert {t["address"] for t in targets} == {"127.0.0.1:1", "127.0.0.1:2"}
    time.sleep(1.5)  # nothing listens on ports 1 and 2: the attempts fail and are shown
    failed = json.loads(daemon.meshnet("status", "connections", "--json").stdout)
    assert any(c["last_error"] == "connection refused" for c in failed)
    assert daemon.meshnet("forget", "127.0.0.1:2").returncode == 0
    forget_again = daemon.meshnet("forget", "127.0.0.1:2")
    assert forget_again.returncode == 1
    assert forget_again.stderr.strip() == "meshnet: 127.0.0.1:2 is not a target"

    again = daemon.meshnet("launch", "--port", str(daemon.port))
    assert again.returncode == 1 and "already running" in again.stderr

    # The peer name survives a restart; the uid does not.
    assert daemon.meshnet("stop").returncode == 0
    assert not daemon.socket.exists()
    relaunched = daemon.meshnet("launch", "--port", str(daemon.port))
    assert relaunched.stdout.strip() == name
    assert json.loads(daemon.meshnet("status", "--json").stdout)["uid"] != status["uid"]


def test_sigterm_shuts_down_cleanly(daemon: Daemon) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshnet",
            "launch",
            "--foreground",
            "--no-dataplane",
            "--port",
            str(daemon.port),
        ],
        env=daemon.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ApiClient(daemon.socket).is_ready():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "received SIGTERM" in err and "stopping" in err
    assert not daemon.socket.exists()


def test_user_errors_are_one_line(daemon: Daemon, tmp_path: Path) -> None:
    def one_line(result: subprocess.CompletedProcess[str], fragment: str) -> None:
        assert result.returncode != 0
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert fragment in result.stderr

    one_line(daemon.meshnet("status"), "meshnet is not running")
    one_line(daemon.meshnet("stop"), "meshnet is not running")
    one_line(daemon.meshnet("launch", "--port", "70000"), "'--port'")
    one_line(daemon.meshnet("launch", "not an address!"), "bad peer address")
    one_line(
        daemon.meshnet("launch", "--password-file", str(tmp_path / "none")),
        "cannot read password file",
    )
    one_line(daemon.meshnet("launch", "--password", ""), "password is empty")
    for bad in ("0.0.0.0:6782", "10.0.0.1:80", "127.0.0.1", "127.0.0.1:0", "localhost:80"):
        one_line(daemon.meshnet("launch", "--http-addr", bad), "expected a loopback HOST:PORT")
    # A port someone else holds: the background launch reports the daemon's own error.
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("0.0.0.0", daemon.port))
        busy.listen()
        one_line(
            daemon.meshnet("launch", "--port", str(daemon.port)),
            f"cannot listen on TCP port {daemon.port}",
        )


def test_api_rejects_unknown_and_malformed_requests(daemon: Daemon) -> None:
    assert daemon.meshnet("launch", "--port", str(daemon.port)).returncode == 0
    client = ApiClient(daemon.socket)
    with pytest.raises(UserError, match="no such endpoint"):
        client.get("/nope")
    with pytest.raises(UserError, match="not allowed"):
        client.get("/connect")
    with pytest.raises(UserError, match="address"):
        client.post("/connect", {"addr": "x"})
    with pytest.raises(UserError, match="bad peer address"):
        client.post("/connect", {"address": "::::::"})


def test_the_api_over_http_on_loopback(daemon: Daemon) -> None:
    http_port = free_port()
    launched = daemon.meshnet(
        "launch", "--port", str(daemon.port), "--http-addr", f"127.0.0.1:{http_port}"
    )
    assert launched.returncode == 0, launched.stderr
    base = f"http://127.0.0.1:{http_port}"
    status = httpx.get(f"{base}/status", timeout=5).json()
    assert status["name"] == launched.stdout.strip()
    metrics = httpx.get(f"{base}/metrics", timeout=5)
    assert metrics.status_code == 200 and "meshnet_" in metrics.text
    assert daemon.meshnet("stop").returncode == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/status", timeout=5)


def test_over_http_nothing_changes_state_and_only_our_address_is_served(daemon: Daemon) -> None:
    """A local user, or a web page in a local browser (a cross-site POST, or DNS rebinding: a
    name of the attacker's that resolves to 127.0.0.1), attacks the HTTP API of a real router:
    nothing that changes state is done, and nothing is shown to a request for another host."""
    http_port = free_port()
    launched = daemon.meshnet(
        "launch", "--port", str(daemon.port), "--http-addr", f"127.0.0.1:{http_port}"
    )
    assert launched.returncode == 0, launched.stderr
    base = f"http://127.0.0.1:{http_port}"
    ours, rebound = f"127.0.0.1:{http_port}", f"evil.example:{http_port}"
    for method, path, body in (
        ("POST", "/stop", {}),
        ("POST", "/connect", {"address": "127.0.0.1:1"}),
        ("POST", "/attach", {"container": "1"}),
        ("POST", "/expose", {"addresses": []}),
        ("POST", "/ipam/reset", {}),
    ):
        for host in (ours, rebound):
            answer = httpx.request(method, f"{base}{path}", json=body, headers={"Host": host})
            assert answer.status_code in (403, 404, 405), (method, path, host, answer.text)
    for path in ("/status", "/metrics", "/report", "/status/peers"):
        refused = httpx.get(f"{base}{path}", headers={"Host": rebound}, timeout=5)
        assert refused.status_code == 403 and "meshnet_" not in refused.text
        assert httpx.get(f"{base}{path}", headers={"Host": f"localhost:{http_port}"}).is_success
    assert httpx.get(f"{base}/containers", timeout=5).status_code == 404  # not read-only enough
    status = ApiClient(daemon.socket).get("/status")  # still running, nothing connected
    assert status["name"] == launched.stdout.strip()
    assert ApiClient(daemon.socket).get("/status/targets") == []


def test_launch_warns_about_a_short_or_visible_password(daemon: Daemon, tmp_path: Path) -> None:
    """Warnings come before anything starts; a busy port then ends the launch quickly."""
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("0.0.0.0", daemon.port))
        busy.listen()
        flag = daemon.meshnet("launch", "--port", str(daemon.port), "--password", "hunter2")
        assert "only 7 bytes" in flag.stderr and "visible to every local user" in flag.stderr
        daemon.env["MESHNET_PASSWORD"] = "hunter2"
        env = daemon.meshnet("launch", "--port", str(daemon.port))
        assert "only 7 bytes" in env.stderr and "visible" not in env.stderr
        del daemon.env["MESHNET_PASSWORD"]
        secret = tmp_path / "secret"
        secret.write_bytes(bytes(range(200, 232)))
        binary = daemon.meshnet("launch", "--password-file", str(secret))
        assert binary.returncode != 0 and "is not text" in binary.stderr
        secret.write_text("x" * 44 + "\n")
        strong = daemon.meshnet(
            "launch", "--port", str(daemon.port), "--password-file", str(secret)
        )
        assert "warning" not in strong.stderr and "cannot listen" in strong.stderr


def test_metrics_addr_serves_only_metrics_and_an_address_not_ours_is_one_line(
    daemon: Daemon,
) -> None:
    """Any address may be given; there only GET /metrics is served (the API stays on the
    socket). Tested on another host's address in tests/net/test_real_hosts.py."""
    metrics_port = free_port()
    launched = daemon.meshnet(
        "launch", "--port", str(daemon.port), "--metrics-addr", f"127.0.0.1:{metrics_port}"
    )
    assert launched.returncode == 0, launched.stderr
    base = f"http://127.0.0.1:{metrics_port}"
    metrics = httpx.get(f"{base}/metrics", headers={"Host": "prometheus.example"}, timeout=5)
    assert metrics.status_code == 200 and "meshnet_connection_terminations_total" in metrics.text
    assert httpx.get(f"{base}/status", timeout=5).status_code == 404
    assert httpx.post(f"{base}/stop", timeout=5).status_code == 404
    assert ApiClient(daemon.socket).get("/status")["name"] == launched.stdout.strip()
    assert daemon.meshnet("stop").returncode == 0
    # 192.0.2.1 (TEST-NET-1) is on no interface here: the launch says so in one line.
    refused = daemon.meshnet(
        "launch", "--port", str(daemon.port), "--metrics-addr", f"192.0.2.1:{metrics_port}"
    )
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [
        f"meshnet: cannot listen on --metrics-addr 192.0.2.1:{metrics_port}: "
        "Cannot assign requested address"
    ]


def test_a_burst_of_route_notifications_is_one_change_read_to_the_end() -> None:
    """The daemon looks at the unroutable addresses once per burst (then holds off), so it
    reads everything pending at once: a backlog must not be served one datagram a second."""
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with reader, writer:
        reader.setblocking(False)
        writer.send(route_notification(24, 255))  # local table only: not a change
        assert not routes_changed_in(reader)
        for _ in range(50):
            writer.send(route_notification(24, 254))
        assert routes_changed_in(reader)
        assert not routes_changed_in(reader)  # nothing left behind
