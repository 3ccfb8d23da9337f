"""DNS over IPv6 in a real lab, asked with dig: AAAA and ip6.arpa answers, NODATA for a name of
the other family, queries over IPv6 (UDP and TCP) to an IPv6 listen address, forwarding to an
upstream reached over IPv6, and that address closed to the underlay.

Two hosts in a line (h1 - h2). Until IPAM hands out IPv6 addresses, the container gets a static
IPv6 address at attach (a CIDR spec outside the range is used as given), and h1's router is
told to listen on an IPv6 overlay address through ``POST /dns/listen``. The upstream is the
fake server in h2, on an IPv6 address of the h1 - h2 underlay link: the only upstream the
routers know, so a forwarded answer proves the IPv6 path.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshnet.api.client import ApiClient
from meshnet.lab import lab as lablib
from tests.conftest import run_meshnet
from tests.net.conftest import ns_run
from tests.net.test_ipam import new_namespace
from tests.net.test_mesh import wait_for

FAKE_UPSTREAM = Path(__file__).with_name("dns_upstream.py")
UPSTREAM_PORT = 5353
H1_UNDERLAY6, H2_UNDERLAY6 = "fd99::1", "fd99::2"  # on the h1 - h2 link
DNS6 = "fd00:5::53/64"  # h1's DNS server, on its bridge
CONTAINER6 = "fd00:5::11/64"


def dig(namespace: str, *args: str) -> str:
    result = ns_run(namespace, "dig", "+time=2", "+tries=1", *args, timeout=15)
    return result.stdout


def status_line(answer: str) -> tuple[str, str]:
    """The rcode and the answer count dig reports (``ANSWER: 0``: no records)."""
    header = next(line for line in answer.splitlines() if "status:" in line)
    flags = next(line for line in answer.splitlines() if "ANSWER:" in line)
    rcode = header.split("status:")[1].split(",")[0].strip()
    count = flags.split("ANSWER:")[1].split(",")[0].strip()
    return rcode, count


def dropped_by_dns_table(namespace: str, address: str) -> int:
    """Packets the DNS table dropped for ``address`` arriving from outside the bridge."""
    table = ns_run(namespace, "nft", "list", "table", "inet", "meshnet_dns").stdout
    line = next(x for x in table.splitlines() if f"daddr {address} counter" in x)
    return int(line.split("packets")[1].split()[0])


def test_aaaa_ptr_nodata_ipv6_transport_and_an_ipv6_upstream(
    make_lab: Callable[..., dict[str, Any]],
) -> None:
    state = make_lab("line", 2, 0, dns_upstreams=(f"[{H2_UNDERLAY6}]:{UPSTREAM_PORT}",))
    hosts = {h["name"]: h for h in state["hosts"]}
    h1, h2 = hosts["h1"]["namespace"], hosts["h2"]["namespace"]
    api = ApiClient(lablib.host_api_socket(hosts["h1"]["dir"]))
    for namespace, ifname, address in ((h1, "to-h2", H1_UNDERLAY6), (h2, "to-h1", H2_UNDERLAY6)):
        added = ns_run(namespace, "ip", "addr", "add", f"{address}/64", "dev", ifname, "nodad")
        assert added.returncode == 0, added.stderr
    upstream = subprocess.Popen(
        [
            "ip", "netns", "exec", h2, sys.executable, str(FAKE_UPSTREAM), H2_UNDERLAY6,
            str(UPSTREAM_PORT),
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert upstream.stdout is not None and upstream.stdout.readline().strip() == "ready"
        # A dual-stack container, named at attach: both its addresses are registered.
        container = new_namespace(state, "c6")
        attached = api.post(
            "/attach",
            {"container": container, "addresses": ["net:default", CONTAINER6], "name": "six"},
        )
        four = next(a.split("/")[0] for a in attached["addresses"] if "." in a)
        six = CONTAINER6.split("/")[0]
        wait_for(
            lambda: "tentative" not in ns_run(container, "ip", "-6", "addr").stdout,
            what="the container's IPv6 addresses to leave DAD",
        )
        assert api.post("/dns/lookup", {"name": "six"})["addresses"] == [four, six]

        # The IPv4 server (IPAM's address) answers AAAA, ip6.arpa PTR and NODATA.
        server4 = api.get("/status/dns")["listen"].split("/")[0]
        env = lablib.host_environment(hosts["h1"])
        added = run_meshnet("dns-add", "fd00:5::77", "--hostname", "extra6", env=env)
        assert added.returncode == 0, added.stderr
        assert run_meshnet("dns-add", "10.32.9.9", "--hostname", "v4only", env=env).returncode == 0
        at4 = f"@{server4}"
        assert dig(container, at4, "+short", "AAAA", "six.meshnet.local").split() == [six]
        assert dig(container, at4, "+short", "AAAA", "extra6.meshnet.local").split() == [
            "fd00:5::77"
        ]
        assert dig(container, at4, "+short", "-x", six).split() == ["six.meshnet.local."]
        assert status_line(dig(container, at4, "AAAA", "v4only.meshnet.local")) == ("NOERROR", "0")
        assert status_line(dig(container, at4, "A", "extra6.meshnet.local")) == ("NOERROR", "0")
        assert status_line(dig(container, at4, "AAAA", "nobody.meshnet.local")) == (
            "NXDOMAIN",
            "0",
        )

        # An IPv6 listen address: UDP and TCP over IPv6, local and forwarded names.
        api.post("/dns/listen", {"address": DNS6})
        wait_for(
            lambda: DNS6 in api.get("/status/dns")["listen_addresses"],
            what="h1's DNS server to listen on its IPv6 address",
        )
        at6 = "@" + DNS6.split("/")[0]
        for transport in ("+notcp", "+tcp"):
            assert dig(
                container, at6, transport, "+short", "AAAA", "six.meshnet.local"
            ).split() == [six]
            assert dig(container, at6, transport, "+short", "A", "six.meshnet.local").split() == [
                four
            ]
            assert dig(container, at6, transport, "+short", "abcdef.example").split() == [
                "192.0.2.6"  # from the upstream, asked at [fd99::2]:5353
            ]
        reverse = dig(container, at6, "-x", "fd00:5::99")  # our network, no record
        assert status_line(reverse) == ("NXDOMAIN", "0") and " aa" in reverse.split("flags:")[1]
        assert api.get("/status/dns")["server"]["upstream_failures"] == 0

        # The IPv6 address answers the bridge only: h2, routing it over the underlay, gets
        # nothing (dropped by the DNS table's counter).
        route = ns_run(h2, "ip", "route", "add", "fd00:5::/64", "via", H1_UNDERLAY6)
        assert route.returncode == 0, route.stderr
        closed = ns_run(h2, "dig", "+time=2", "+tries=1", at6, "AAAA", "six.meshnet.local")
        assert closed.returncode == 9, closed.stdout  # no reply at all
        assert dropped_by_dns_table(h1, DNS6.split("/")[0]) > 0

        # Taken off again: the address leaves the bridge and the table.
        api.post("/dns/listen", {"address": DNS6, "stop": True})
        wait_for(
            lambda: DNS6 not in api.get("/status/dns")["listen_addresses"],
            what="h1's DNS server to stop listening on its IPv6 address",
        )
        # Unbound first (what status shows), then the address goes, then its table entry.
        wait_for(
            lambda: (
                DNS6.split("/")[0]
                not in ns_run(h1, "ip", "-6", "addr", "show", "dev", "meshnet").stdout
            ),
            what="the IPv6 DNS address to leave the bridge",
        )

        def table() -> str:
            return ns_run(h1, "nft", "list", "table", "inet", "meshnet_dns").stdout

        wait_for(lambda: DNS6.split("/")[0] not in table(), what="the address to leave the table")
        assert server4 in table()
    finally:
        upstream.kill()
        upstream.wait()
