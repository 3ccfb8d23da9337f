"""DNS across a real lab: names from every host, PTR, removal, round robin, forwarding, bad
input, and no answers from the underlay.

One lab of three hosts in a line (h1 - h2 - h3), one container each, shared by the tests of
this module (each uses its own names). Upstream queries go to a fake server in h2's namespace
on its underlay address: the machine's own resolvers are never asked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshnet.api.client import ApiClient
from meshnet.lab import lab as lablib
from meshnet.lab import topology
from tests.conftest import unique_lab_name
from tests.net.conftest import ns_run

UPSTREAM_PORT = 5353
FAKE_UPSTREAM = Path(__file__).with_name("dns_upstream.py")


class DnsLab:
    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status
        self.hosts = {h["name"]: h for h in status["hosts"]}
        self.containers = {c["name"]: c for c in status["containers"]}

    def client(self, host: str) -> ApiClient:
        return ApiClient(lablib.host_api_socket(self.hosts[host]["dir"]))

    def dns_status(self, host: str) -> dict[str, Any]:
        status: dict[str, Any] = self.client(host).get("/status/dns")
        return status

    def server(self, host: str) -> str:
        return str(self.dns_status(host)["listen"]).split("/")[0]

    def address(self, container: str) -> str:
        return str(self.containers[container]["addresses"][0]).split("/")[0]

    def ns(self, container: str) -> str:
        return str(self.containers[container]["namespace"])

    def dig(self, container: str, *args: str, timeout: float = 10) -> str:
        result = ns_run(self.ns(container), "dig", "+time=3", "+tries=1", *args, timeout=timeout)
        return result.stdout


def python_in(namespace: str, code: str, *args: str, timeout: float = 30) -> Any:
    """Run ``code`` (which prints JSON; ``args`` in sys.argv) inside ``namespace``."""
    result = ns_run(namespace, sys.executable, "-c", textwrap.dedent(code), *args, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def dns_lab() -> Iterator[DnsLab]:
    name = unique_lab_name()
    h2_underlay = "172.31.0.2"  # the first link's second end: line h1 - h2
    upstream = None
    try:
        lablib.up(
            name,
            topology.builtin("line", 3, 1),
            dns_upstreams=(f"{h2_underlay}:{UPSTREAM_PORT}",),
        )
        lab = DnsLab(lablib.status(name))
        assert lab.hosts["h2"]["underlay"][0]["address"] == f"{h2_underlay}/24"
        upstream = subprocess.Popen(
            [
                "ip", "netns", "exec", lab.hosts["h2"]["namespace"], sys.executable,
                str(FAKE_UPSTREAM), h2_underlay, str(UPSTREAM_PORT),
            ],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert upstream.stdout is not None and upstream.stdout.readline().strip() == "ready"
        yield lab
    finally:
        if upstream is not None:
            upstream.kill()
            upstream.wait()
        if (lablib.lab_root() / name).exists():
            lablib.down(name)


def eventually(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def test_container_names_resolve_from_another_host_with_dig_and_dnspython(dns_lab: DnsLab) -> None:
    h3c1 = dns_lab.address("h3-c1")
    resolv = Path("/etc/netns") / dns_lab.ns("h1-c1") / "resolv.conf"
    assert f"nameserver {dns_lab.server('h1')}" in resolv.read_text()
    assert eventually(lambda: dns_lab.dig("h1-c1", "+short", "h3-c1.meshnet.local").split())
    assert dns_lab.dig("h1-c1", "+short", "h3-c1.meshnet.local").split() == [h3c1]
    assert dns_lab.dig("h1-c1", "+short", "-x", h3c1).split() == ["h3-c1.meshnet.local."]
    # dnspython with the container's resolv.conf (the search domain makes the short name work).
    found = python_in(
        dns_lab.ns("h1-c1"),
        """
        import json, sys, dns.resolver
        r = dns.resolver.Resolver()  # /etc/resolv.conf: the lab's file, bind-mounted
        short = [a.to_text() for a in r.resolve("h3-c1", "A", search=True)]
        full = [a.to_text() for a in r.resolve("H3-C1.meshnet.local.", "A")]
        ptr = [a.to_text() for a in r.resolve_address(sys.argv[1])]
        print(json.dumps([short, full, ptr]))
        """,
        h3c1,
    )
    assert found == [[h3c1], [h3c1], ["h3-c1.meshnet.local."]]
    # Unknown names in the domain are NXDOMAIN; a known name asked for AAAA has no answer.
    assert "status: NXDOMAIN" in dns_lab.dig("h1-c1", "nobody.meshnet.local")
    nodata = dns_lab.dig("h1-c1", "AAAA", "h3-c1.meshnet.local")
    assert "status: NOERROR" in nodata and "ANSWER: 0" in nodata
    # And over TCP.
    assert dns_lab.dig("h1-c1", "+tcp", "+short", "h3-c1.meshnet.local").split() == [h3c1]


def test_detach_removes_the_name_on_every_host(dns_lab: DnsLab) -> None:
    ns = dns_lab.ns("h3-c1")
    address = dns_lab.address("h3-c1")
    h3 = dns_lab.client("h3")
    h3.post("/dns/add", {"container": ns, "addresses": [], "name": "leaving"})

    def everywhere(present: bool) -> bool:
        return all(
            bool(dns_lab.client(h).post("/dns/lookup", {"name": "leaving"})["addresses"]) == present
            for h in ("h1", "h2", "h3")
        )

    assert eventually(lambda: everywhere(True))
    assert dns_lab.dig("h1-c1", "+short", "leaving.meshnet.local").split() == [address]
    started = time.monotonic()
    h3.post("/detach", {"container": ns, "addresses": []})
    assert eventually(lambda: everywhere(False), timeout=5)
    assert time.monotonic() - started < 5
    assert "status: NXDOMAIN" in dns_lab.dig("h1-c1", "h3-c1.meshnet.local")
    # Attaching again (IPAM gives the same address) registers its name again.
    h3.post("/attach", {"container": ns, "addresses": [], "name": "h3-c1"})
    assert eventually(lambda: dns_lab.dig("h1-c1", "+short", "h3-c1.meshnet.local").split())


def test_a_name_of_two_containers_answers_both_in_varying_order(dns_lab: DnsLab) -> None:
    for host, container in (("h2", "h2-c1"), ("h3", "h3-c1")):
        dns_lab.client(host).post(
            "/dns/add", {"container": dns_lab.ns(container), "addresses": [], "name": "both"}
        )
    expected = {dns_lab.address("h2-c1"), dns_lab.address("h3-c1")}
    assert eventually(
        lambda: set(dns_lab.dig("h1-c1", "+short", "both.meshnet.local").split()) == expected
    )
    orders = python_in(
        dns_lab.ns("h1-c1"),
        """
        import json, sys, dns.message, dns.query
        orders = set()
        for _ in range(40):
            q = dns.message.make_query("both.meshnet.local.", "A")
            r = dns.query.udp(q, sys.argv[1], timeout=2)
            orders.add(tuple(rd.address for rd in r.answer[0]))
        print(json.dumps(sorted(orders)))
        """,
        dns_lab.server("h1"),
    )
    assert {frozenset(o) for o in orders} == {frozenset(expected)}
    assert len(orders) == 2  # both orders seen in 40 tries (a chance of 2 * 2**-40 otherwise)


def test_foreign_names_go_upstream_and_a_dead_upstream_means_servfail(dns_lab: DnsLab) -> None:
    assert dns_lab.dig("h1-c1", "+short", "abcd.example").split() == ["192.0.2.4"]
    # Truncated over UDP upstream: the server asks again over TCP, then truncates for the
    # client, which retries over TCP itself (dig does) and gets all 60.
    assert len(dns_lab.dig("h1-c1", "+short", "big.example").split()) == 60
    assert "status: NXDOMAIN" in dns_lab.dig("h1-c1", "nothing.invalid")
    started = time.monotonic()
    out = dns_lab.dig("h1-c1", "+time=6", "silent.example", timeout=15)
    elapsed = time.monotonic() - started
    assert "status: SERVFAIL" in out
    assert elapsed < 4.5  # the upstream timeout is 2s
    assert dns_lab.dig("h1-c1", "+short", "h3-c1.meshnet.local").split()
    assert dns_lab.dns_status("h1")["server"]["upstream_failures"] >= 1


def test_malformed_queries_get_formerr_or_nothing_and_the_server_keeps_answering(
    dns_lab: DnsLab,
) -> None:
    server = dns_lab.server("h1")
    before = dns_lab.dns_status("h1")
    result = python_in(
        dns_lab.ns("h1-c1"),
        """
        import json, os, random, socket, struct, sys, dns.message, dns.rcode
        server = sys.argv[1]
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((server, 53))
        s.settimeout(0.5)

        def ask(wire):
            s.send(wire)
            try:
                return s.recv(65535)
            except TimeoutError:
                return None

        def rcode(reply):
            return None if reply is None else reply[3] & 0x0F

        qname = b"\\x05h3-c1\\x07meshnet\\x05local\\x00"
        out = {}
        out["short"] = ask(b"\\x12\\x34\\x01")
        out["header_only"] = rcode(ask(struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0)))
        out["wrong_class"] = rcode(ask(struct.pack("!6H", 2, 0x0100, 1, 0, 0, 0) + qname
                                       + struct.pack("!HH", 1, 3)))
        out["loop"] = rcode(ask(struct.pack("!6H", 3, 0x0100, 1, 0, 0, 0) + b"\\xc0\\x0c"
                                + struct.pack("!HH", 1, 1)))
        out["huge_counts"] = rcode(ask(struct.pack("!6H", 4, 0x0100, 65535, 65535, 65535, 65535)
                                       + qname + struct.pack("!HH", 1, 1)))
        out["response"] = ask(struct.pack("!6H", 5, 0x8180, 1, 0, 0, 0) + qname
                              + struct.pack("!HH", 1, 1))
        rng = random.Random(6)
        for i in range(2000):  # fuzz: random bytes, and valid queries with bytes flipped
            if i % 2:
                wire = bytearray(dns.message.make_query("h3-c1.meshnet.local.", "A").to_wire())
                for _ in range(rng.randint(1, 4)):
                    wire[rng.randrange(len(wire))] = rng.randrange(256)
                s.send(bytes(wire))
            else:
                s.send(os.urandom(rng.randint(0, 600)))
        s.settimeout(0.2)
        try:
            while True:
                s.recv(65535)
        except TimeoutError:
            pass
        s.settimeout(2)
        good = dns.message.from_wire(ask(dns.message.make_query("h3-c1.meshnet.local.", "A")
                                         .to_wire()))
        out["after"] = [rd.address for rd in good.answer[0]]
        print(json.dumps(out))
        """,
        server,
    )
    formerr = 1
    assert result["short"] is None
    assert result["response"] is None
    assert result["header_only"] == formerr
    assert result["wrong_class"] == formerr
    assert result["loop"] == formerr
    assert result["huge_counts"] == formerr
    assert result["after"] == [dns_lab.address("h3-c1")]
    after = dns_lab.dns_status("h1")
    assert after["resolver"]["formerr"] >= before["resolver"]["formerr"] + 4
    assert after["resolver"]["dropped"] >= before["resolver"]["dropped"] + 2
    assert after["server"]["internal_errors"] == 0


def test_the_underlay_gets_no_answer_and_the_overlay_reaches_only_port_53(
    dns_lab: DnsLab,
) -> None:
    server = dns_lab.server("h1")
    h1, h2 = dns_lab.hosts["h1"], dns_lab.hosts["h2"]
    h1_underlay = next(u for u in h1["underlay"] if u["peer"] == "h2")["address"].split("/")[0]
    # h2 routes h1's DNS address over the underlay link, as a neighbour trying to use it would.
    route = ns_run(h2["namespace"], "ip", "route", "add", f"{server}/32", "via", h1_underlay)
    assert route.returncode == 0, route.stderr
    try:
        out = ns_run(
            h2["namespace"], "dig", "+time=1", "+tries=2", f"@{server}", "h3-c1.meshnet.local"
        )
        assert "connection timed out" in out.stdout or "no servers" in out.stdout, out.stdout
        assert "ANSWER SECTION" not in out.stdout
    finally:
        ns_run(h2["namespace"], "ip", "route", "del", f"{server}/32")
    table = ns_run(h1["namespace"], "nft", "list", "table", "inet", "meshnet_dns").stdout
    dropped = next(line for line in table.splitlines() if f"ip daddr {server} counter" in line)
    assert " packets 0 " not in dropped  # it arrived, and our rule dropped it
    # From the overlay, the host is closed but for DNS: no ping, no API port.
    assert ns_run(dns_lab.ns("h1-c1"), "ping", "-c", "1", "-W", "1", server).returncode != 0
    probe = ns_run(dns_lab.ns("h1-c1"), "nc", "-z", "-w", "1", server, "6783")
    assert probe.returncode != 0


def test_status_dns_and_the_cli(dns_lab: DnsLab) -> None:
    env = {**lablib.host_environment(dns_lab.hosts["h1"])}
    status = dns_lab.dns_status("h1")
    assert status["domain"] == "meshnet.local."
    assert status["upstreams"] == [f"172.31.0.2:{UPSTREAM_PORT}"]
    peers = {e["nickname"] for e in status["entries"]}
    assert peers == {"h1", "h2", "h3"}
    cli = [sys.executable, "-m", "meshnet"]

    def meshnet(*args: str) -> subprocess.CompletedProcess[str]:
        import os

        return subprocess.run(
            ["ip", "netns", "exec", dns_lab.hosts["h1"]["namespace"], *cli, *args],
            capture_output=True, text=True, env={**os.environ, **env}, timeout=30,
        )  # fmt: skip

    assert meshnet("dns-lookup", "h1-c1").stdout.split() == [dns_lab.address("h1-c1")]
    missing = meshnet("dns-lookup", "nobody")
    assert missing.returncode == 1 and "not found" in missing.stderr
    added = meshnet(
        "dns-add", "10.32.99.99", dns_lab.ns("h1-c1"), "--hostname", "extra.meshnet.local"
    )
    assert added.returncode == 0, added.stderr
    assert meshnet("dns-lookup", "extra").stdout.split() == ["10.32.99.99"]
    removed = meshnet("dns-remove", dns_lab.ns("h1-c1"), "--hostname", "extra")
    assert removed.returncode == 0, removed.stderr
    assert meshnet("dns-lookup", "extra").returncode == 1
    # attach --name: the container (already attached: nothing changes) gets one more name.
    attached = meshnet("attach", "--name", "Web2", dns_lab.ns("h1-c1"))
    assert attached.returncode == 0, attached.stderr
    assert meshnet("dns-lookup", "web2").stdout.split() == [dns_lab.address("h1-c1")]
    bad = meshnet("attach", "--name", "no such name", dns_lab.ns("h1-c1"))
    assert bad.returncode == 1 and bad.stderr.startswith("meshnet: bad DNS name")
    table = meshnet("status", "dns")
    assert table.returncode == 0 and "h1-c1.meshnet.local." in table.stdout
    as_json = json.loads(meshnet("status", "dns", "--json").stdout)
    assert as_json["listen"] == status["listen"]


def test_a_stopped_router_leaves_nothing_open_and_its_names_come_back_with_it(
    dns_lab: DnsLab,
) -> None:
    # Last in this module: it restarts h3's router (and leaves it running again).
    h3 = dns_lab.hosts["h3"]
    server = dns_lab.server("h3")
    h3_address = dns_lab.address("h3-c1")
    assert eventually(lambda: dns_lab.dig("h1-c1", "+short", "h3-c1.meshnet.local").split())
    dns_lab.client("h3").post("/stop")
    assert eventually(lambda: not lablib.host_api_socket(h3["dir"]).exists())
    addresses = ns_run(h3["namespace"], "ip", "-o", "addr", "show", "dev", "meshnet").stdout
    assert server not in addresses
    tables = ns_run(h3["namespace"], "nft", "list", "tables").stdout
    assert "meshnet_dns" not in tables
    # Gone from the mesh: h1 hides h3's names (and keeps them, should h3 come back).
    assert eventually(
        lambda: "status: NXDOMAIN" in dns_lab.dig("h1-c1", "h3-c1.meshnet.local"), timeout=30
    )
    lablib.start_router(dns_lab.status["name"], "h3")
    # Back, with its records reloaded from its state directory, at the same address.
    assert eventually(
        lambda: dns_lab.dig("h1-c1", "+short", "h3-c1.meshnet.local").split() == [h3_address],
        timeout=30,
    )
    assert eventually(lambda: dns_lab.dns_status("h3")["listen"] is not None)
    assert dns_lab.server("h3") == server
