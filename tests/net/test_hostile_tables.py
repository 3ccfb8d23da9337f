"""Issue 17, point 7: tables keyed by what peers and containers send stay bounded.

Each test attacks real routers in a lab and checks that legitimate traffic (or names) keep
working and that the router's memory stays bounded:

- a container sprays frames with made-up source MACs: the bridge drops every one whose source
  is not the port's own MAC, the switch's MAC table stays small, ping keeps working;
- a host registers names past its quota (the API's ``/dns/add``, as any password holder's
  router could): the other host's own names still register and resolve; a departed peer's
  records go on ``rmpeer``;
- the discovered dial targets stay bounded whatever a peer advertises.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from meshnet.dataplane.kernel import netlink
from meshnet.errors import UserError
from meshnet.lab import lab as lablib
from tests.net.conftest import can_ping, ns_run, rss_kib
from tests.net.test_mesh import api, fast_heartbeats, wait_for  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.netns

#: An ethertype for local experiments (IEEE 802): no stack answers it, isolation passes it.
ETHERTYPE = 0x88B5


def container(state: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in state["containers"] if c["name"] == name)


def address(state: dict[str, Any], name: str) -> str:
    return str(container(state, name)["addresses"][0]).split("/")[0]


def router_rss_kib(state: dict[str, Any], host: str) -> int:
    entry = next(h for h in state["hosts"] if h["name"] == host)
    for pid in netlink.namespace_pids(entry["namespace"]):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"--foreground" not in f.read():
                continue
        return rss_kib(pid)
    raise AssertionError(f"no router running in {host}")


def python_in(namespace: str, code: str, *args: str, timeout: float = 60) -> Any:
    """Run ``code`` (which prints JSON; ``args`` in sys.argv) inside ``namespace``."""
    result = ns_run(namespace, sys.executable, "-c", textwrap.dedent(code), *args, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- (c) source MACs ------------------------------------------------------------------------------

SPRAY = """
    import json, os, socket, sys
    count, ethertype, own = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "own"
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("ethwe", 0))
    mine = s.getsockname()[4]
    sent = 0
    for i in range(count):
        src = mine if own else bytes([0x02, 0x5A]) + i.to_bytes(4, "big")
        frame = b"\\xff" * 6 + src + ethertype.to_bytes(2, "big") + b"spray" + bytes(41)
        try:
            s.send(frame)
            sent += 1
        except OSError:  # ENOBUFS under the burst: the queue is full, go on
            pass
    print(json.dumps({"sent": sent, "mac": mine.hex(":")}))
"""

LISTEN = """
    import json, socket, sys, time
    ethertype, seconds = int(sys.argv[1]), float(sys.argv[2])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
    s.bind(("ethwe", 0))
    s.settimeout(0.2)
    print(json.dumps({"ready": True}), flush=True)
    sources = set()
    frames = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            frame = s.recv(2048)
        except TimeoutError:
            continue
        frames += 1
        sources.add(frame[6:12].hex(":"))
    print(json.dumps({"frames": frames, "sources": sorted(sources)}))
"""


def test_a_container_spraying_source_macs_is_dropped_at_the_bridge_and_tables_stay_capped(
    make_lab: Any,
) -> None:
    state = make_lab("line", hosts=2, containers=1)
    c1, c2 = container(state, "h1-c1"), container(state, "h2-c1")
    assert wait_for(lambda: can_ping(c1["namespace"], address(state, "h2-c1")), what="ping")
    rss_before = router_rss_kib(state, "h1")
    listener = subprocess.Popen(
        ["ip", "netns", "exec", c2["namespace"], sys.executable, "-c", textwrap.dedent(LISTEN),
         str(ETHERTYPE), "20"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert listener.stdout is not None and "ready" in listener.stdout.readline()
        # A positive control: frames from the container's own MAC do cross the mesh.
        own = python_in(c1["namespace"], SPRAY, "20", str(ETHERTYPE), "own")
        # The attack: 20,000 broadcasts, each from another made-up MAC, with pings meanwhile.
        spray = subprocess.Popen(
            ["ip", "netns", "exec", c1["namespace"], sys.executable, "-c",
             textwrap.dedent(SPRAY), "20000", str(ETHERTYPE), "spoof"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        pings = [can_ping(c1["namespace"], address(state, "h2-c1")) for _ in range(3)]
        out, _ = spray.communicate(timeout=120)
        assert json.loads(out)["sent"] > 10_000
        assert any(pings) and can_ping(c1["namespace"], address(state, "h2-c1"))
        out, _ = listener.communicate(timeout=60)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    seen = json.loads(out)
    assert own["mac"] in seen["sources"]  # the listener works and own frames pass
    assert seen["sources"] == [own["mac"]], f"{len(seen['sources'])} foreign sources got through"
    # Counted where they were dropped, and neither router learned them.
    ramps = api(state, "h1").get("/status/ramps")
    assert ramps["dropped"]["spoofed"] >= 10_000
    for host in ("h1", "h2"):
        switch = api(state, host).get("/status/dataplane")["switch"]
        assert switch["entries"] <= 64, (host, switch)
    # Nor did the kernel bridge (whose learned MACs fastdp advertises to its neighbours).
    h1 = next(h for h in state["hosts"] if h["name"] == "h1")
    fdb = ns_run(h1["namespace"], "bridge", "fdb", "show", "br", "meshnet").stdout
    assert len(fdb.splitlines()) < 100
    assert api(state, "h1").get("/status/dataplane")["fastdp"].get("local_macs", 0) < 64
    assert router_rss_kib(state, "h1") - rss_before < 10 * 1024


# --- (a) the DNS store ----------------------------------------------------------------------------


def dig(namespace: str, *args: str) -> str:
    return ns_run(namespace, "dig", "+time=3", "+tries=1", *args, timeout=15).stdout


def records_of(state: dict[str, Any], host: str) -> dict[str, Any]:
    result: dict[str, Any] = api(state, host).get("/status/dns")["records"]
    return result


def own_entries(state: dict[str, Any], host: str, origin: str) -> list[dict[str, Any]]:
    """The records of ``origin`` (a host's nickname) that ``host`` answers."""
    for entry in api(state, host).get("/status/dns")["entries"]:
        if entry["nickname"] == origin:
            return list(entry["records"])
    return []


def test_one_host_flooding_names_leaves_room_for_others_and_rmpeer_purges_its_records(
    make_lab: Any,
) -> None:
    state = make_lab("line", hosts=2, containers=1)
    c2 = container(state, "h2-c1")
    attacker, victim = api(state, "h1"), api(state, "h2")
    assert wait_for(lambda: dig(c2["namespace"], "+short", "h1-c1.meshnet.local").split())
    rss_before = router_rss_kib(state, "h2")
    # The attack: h1 registers 9,000 records (a name with 1,000 addresses, nine times), as a
    # router of a password holder whose containers had that many names could.
    refused = 0
    for n in range(9):
        addresses = [f"10.{40 + n}.{i >> 8}.{i & 0xFF}" for i in range(1000)]
        try:
            attacker.post(
                "/dns/add",
                {"container": "flood", "name": f"flood{n}", "addresses": addresses},
            )
        except UserError:
            refused += 1
    sent = len(own_entries(state, "h1", "h1"))
    assert sent >= 1000
    wait_for(lambda: len(own_entries(state, "h2", "h1")) == sent, what="h2 to hold h1's records")
    held = records_of(state, "h2")
    # The victim's own names still register and resolve.
    victim.post(
        "/dns/add",
        {"container": c2["namespace"], "name": "legit", "addresses": [address(state, "h2-c1")]},
    )
    assert dig(c2["namespace"], "+short", "legit.meshnet.local").split() == [
        address(state, "h2-c1")
    ]
    assert dig(c2["namespace"], "+short", "h1-c1.meshnet.local").split()
    assert held["live"] <= 1100, held
    assert refused >= 8  # h1's own quota: at most 1,024 records of its own
    assert router_rss_kib(state, "h2") - rss_before < 10 * 1024
    # h1 leaves for good: its records are hidden, then purged by rmpeer.
    h1_name = next(p["name"] for p in victim.get("/status/peers") if p["nickname"] == "h1")
    attacker.post("/stop")
    wait_for(lambda: records_of(state, "h2")["hidden"] >= 1000, what="h1's records hidden")
    victim.post("/ipam/rmpeer", {"peer": h1_name})
    after = records_of(state, "h2")
    assert after["hidden"] == 0 and after["tombstones"] == 0, after
    assert dig(c2["namespace"], "+short", "legit.meshnet.local").split() == [
        address(state, "h2-c1")
    ]


# --- (b) discovered dial targets ------------------------------------------------------------------

#: Run as a router: the real one, except that its topology entry also lists 999 made-up outbound
#: connections, half at the mesh's port and half at others, in 198.18.0.0/15 (benchmarking
#: space, routed nowhere in the lab: a dial fails at once and no packet leaves the namespace).
LIAR = """
    import os, pickle, random, runpy, sys
    from meshnet import router_process
    from meshnet.gossip import topology
    def here(launch):  # the lie is patched into this interpreter: run the router in it
        fd = os.memfd_create("liar")
        os.write(fd, pickle.dumps(launch))
        os.lseek(fd, 0, os.SEEK_SET)
        sys.exit(router_process.main(fd))
    router_process.exec_router = here
    real = topology.Topology.set_local_connections
    fakes = [
        topology.Connection(
            0x0200_0000_0000 + i,
            f"198.18.{i >> 8}.{i & 0xFF}:{6783 if i % 2 else 1000 + i}",
            True,
            True,
        )
        for i in range(999)
    ]
    def lying(self, connections):
        return real(self, [*connections, *fakes])
    topology.Topology.set_local_connections = lying
    sys.argv = ["meshnet", *sys.argv[1:]]
    runpy.run_module("meshnet", run_name="__main__", alter_sys=True)
"""


def router_command(state: dict[str, Any], host: str) -> tuple[list[str], dict[str, str]]:
    """The arguments (after ``-m meshnet``) and environment of a host's router, as the lab
    starts it."""
    return lablib.router_command(Path(state["directory"]), host)


def test_a_peer_advertising_made_up_connections_gets_few_dialled(make_lab: Any) -> None:
    state = make_lab("line", hosts=2, containers=1)
    c1 = container(state, "h1-c1")
    h1 = next(h for h in state["hosts"] if h["name"] == "h1")
    args, env = router_command(state, "h1")
    api(state, "h1").post("/stop")
    wait_for(lambda: not lablib.host_api_socket(h1["dir"]).exists(), what="h1 to stop")
    with open(f"{h1['dir']}/liar.log", "w") as log:
        liar = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{h1['namespace']}", sys.executable, "-c",
             textwrap.dedent(LIAR), *args],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        victim = api(state, "h2")
        wait_for(
            lambda: any(
                p["nickname"] == "h1" and len(p["connections"]) > 900
                for p in victim.get("/status/peers")
            ),
            what="h2 to hear of h1's made-up connections",
        )
        rss_before = router_rss_kib(state, "h2")
        time.sleep(5)  # the connection maker runs, dials, backs off
        status = victim.get("/status")
        targets = status["targets"]
        assert len(targets) <= 1 + 16, f"{len(targets)} targets"
        assert all(t.endswith(":6783") for t in targets), targets
        assert status["discovery_refused"] >= 999 - 16
        assert router_rss_kib(state, "h2") - rss_before < 10 * 1024
        assert wait_for(lambda: can_ping(c1["namespace"], address(state, "h2-c1")), what="ping")
    finally:
        liar.terminate()
        try:
            liar.wait(timeout=10)
        except subprocess.TimeoutExpired:
            liar.kill()
            liar.wait()
