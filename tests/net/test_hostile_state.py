"""A corrupt state file is moved aside and rebuilt, never a silent reset (issue 17, point 10).

Damaged ``dns-records.msgpack`` and ``ramps.json`` on h1: after a restart, h1's names still
resolve everywhere (the mesh held them; h1 takes them back instead of tombstoning them), what h1
exposed is exposed again, and the damaged files are kept next to where they were.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshnet.api.client import ApiClient
from meshnet.lab import lab as lablib
from tests.conftest import run_meshnet
from tests.net.test_mesh import wait_for


def test_corrupt_dns_and_ramps_state_is_moved_aside_and_rebuilt(
    make_lab: Callable[..., dict[str, Any]],
) -> None:
    lab = make_lab("full", 2, 1)
    hosts = {h["name"]: h for h in lab["hosts"]}
    h1_dir = Path(hosts["h1"]["dir"])

    def client(host: str) -> ApiClient:
        return ApiClient(lablib.host_api_socket(hosts[host]["dir"]), timeout=30)

    def meshnet(host: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run_meshnet(*args, env={**os.environ, **lablib.host_environment(hosts[host])})

    def addresses(host: str, name: str) -> list[str]:
        found: list[str] = client(host).post("/dns/lookup", {"name": name})["addresses"]
        return found

    exposed = meshnet("h1", "expose", "--hostname", "gateway1")  # both families
    assert exposed.returncode == 0, exposed.stderr
    gateways = exposed.stdout.split()
    assert len(gateways) == 2
    named = sorted(g.split("/")[0] for g in gateways)
    h1_name = wait_for(lambda: addresses("h2", "h1-c1"), 20, "h1-c1's name on h2")
    wait_for(lambda: sorted(addresses("h2", "gateway1")) == named, 20, "gateway1 on h2")

    assert meshnet("h1", "stop").returncode == 0
    (h1_dir / "dns-records.msgpack").write_bytes(b"\xc1 not msgpack")
    (h1_dir / "ramps.json").write_text("{ half a json")
    lablib.start_router(lab["name"], "h1")

    aside = sorted(p.name for p in h1_dir.iterdir() if ".corrupt-" in p.name)
    assert [name.split(".corrupt-")[0] for name in aside] == ["dns-records.msgpack", "ramps.json"]
    log = (h1_dir / "meshnet.log").read_text()
    assert "unreadable DNS records" in log and "moved aside to dns-records.msgpack.corrupt-" in log
    assert "unreadable" in log and "moved aside to ramps.json.corrupt-" in log

    # The mesh gives h1 its names back; nobody is told they are gone.
    recovered = lambda: client("h1").get("/status/dns")["records"]["recovered"] >= 2  # noqa: E731
    wait_for(recovered, 20, "h1 to take its records back")
    time.sleep(2)  # a tombstone, had h1 made one, would have reached h2 by now
    assert addresses("h2", "h1-c1") == h1_name
    assert addresses("h1", "h1-c1") == h1_name
    # What h1 exposed is exposed again (IPv4 and IPv6, from IPAM's owners), with its name.
    exposed_now = wait_for(lambda: client("h1").get("/status")["exposed"], 20, "h1's exposure")
    assert [e["address"] for e in exposed_now] == gateways
    assert sorted(addresses("h2", "gateway1")) == named
    # The rebuilt state is written again: a second restart reads it without complaint.
    assert meshnet("h1", "stop").returncode == 0
    lablib.start_router(lab["name"], "h1")
    assert [e["address"] for e in client("h1").get("/status")["exposed"]] == gateways
    assert sorted(p.name for p in h1_dir.iterdir() if ".corrupt-" in p.name) == aside
