"""The DNS server's trio shell over real loopback sockets, and the service over two routers.

The upstream is tests/net/dns_upstream.py run on 127.0.0.1 (it answers only from its own
table, never asks anyone): forwarding, TCP retry on truncation, timeouts and dead servers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.reversename
import pytest
import trio

from meshnet.config import Config
from meshnet.dns import service as service_module
from meshnet.dns.answer import Forward, Reply, Resolver
from meshnet.dns.records import Records
from meshnet.dns.server import DnsServer
from meshnet.dns.service import EXTERNAL, STATE_FILE, DnsService
from meshnet.dns.settings import DnsSettings, parse_upstream
from meshnet.errors import UserError
from meshnet.gossip.identity import Identity, format_peer_name, new_peer_name, new_uid
from meshnet.gossip.router import Router
from meshnet.ipam.allocator import AddressInUse, InitMode, IpamConfig
from meshnet.ipam.range6 import Ipv6Settings
from tests.unit.test_ipam_service import RANGE, FakeNet, start

FAKE_UPSTREAM = Path(__file__).parents[1] / "net" / "dns_upstream.py"


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_server_port(host: str = "127.0.0.1") -> int:
    """A port free for UDP and TCP both, as a DNS server binds (a port free for UDP alone was
    taken for TCP once: EADDRINUSE)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        port = free_port(host)
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind((host, port))
            except OSError:
                continue
        return port


@contextlib.contextmanager
def fake_upstream(host: str) -> Iterator[int]:
    """tests/net/dns_upstream.py on ``host``; its port."""
    port = free_server_port(host)
    proc = subprocess.Popen(
        [sys.executable, str(FAKE_UPSTREAM), host, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield port
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    with fake_upstream("127.0.0.1") as port:
        yield port


def make_records() -> Records:
    records = Records(peer=1, now=time.time())
    records.register("web.meshnet.local", "10.32.0.5", "c1", time.time())
    records.register("web.meshnet.local", "10.32.0.6", "c2", time.time())
    return records


@pytest.fixture
async def server(upstream: int) -> AsyncIterator[tuple[DnsServer, int]]:
    port = free_server_port()
    dead = free_port()  # nothing listens there: the first upstream is down
    srv = DnsServer(
        Resolver(make_records(), reverse_networks=["10.32.0.0/12"]),
        upstreams=[("127.0.0.1", dead), ("127.0.0.1", upstream)],
        timeout=1.0,
        nickname="test",
        rng=random.Random(1),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.serve, "127.0.0.1", port)
        yield srv, port
        nursery.cancel_scope.cancel()


async def ask(
    port: int, name: str, rdtype: str = "A", tcp: bool = False, server: str = "127.0.0.1"
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return await dns.asyncquery.tcp(query, server, port=port, timeout=5)
    return await dns.asyncquery.udp(query, server, port=port, timeout=5)


def addresses(response: dns.message.Message) -> set[str]:
    return {rd.to_text() for rrset in response.answer for rd in rrset}


@pytest.mark.trio
async def test_local_names_over_udp_and_tcp(server: tuple[DnsServer, int]) -> None:
    srv, port = server
    for tcp in (False, True):
        response = await ask(port, "web.meshnet.local.", tcp=tcp)
        assert addresses(response) == {"10.32.0.5", "10.32.0.6"}
        assert response.flags & dns.flags.AA
        assert (await ask(port, "nope.meshnet.local.", tcp=tcp)).rcode() == dns.rcode.NXDOMAIN
        ptr = await ask(port, "5.0.32.10.in-addr.arpa.", "PTR", tcp=tcp)
        assert addresses(ptr) == {"web.meshnet.local."}
    stats = srv.statistics()
    assert stats.udp_queries == 3 and stats.tcp_queries == 3 and stats.tcp_connections == 3


@pytest.mark.trio
async def test_foreign_names_are_forwarded_past_a_dead_upstream(
    server: tuple[DnsServer, int],
) -> None:
    srv, port = server
    response = await ask(port, "abcdef.example.")
    assert addresses(response) == {"192.0.2.6"}
    assert srv.statistics().upstream_failures >= 1  # the dead one, first in the list
    assert srv.statistics().forwarded_ok == 1


@pytest.mark.trio
async def test_a_truncated_upstream_answer_is_fetched_again_over_tcp(
    server: tuple[DnsServer, int],
) -> None:
    _, port = server
    over_udp = await ask(port, "big.example.")
    assert over_udp.flags & dns.flags.TC  # 60 records do not fit 512 bytes for the client
    over_tcp = await ask(port, "big.example.", tcp=True)
    assert len(addresses(over_tcp)) == 60


@pytest.fixture(scope="module")
def upstream6() -> Iterator[int]:
    with fake_upstream("::1") as port:
        yield port


@pytest.mark.trio
async def test_over_ipv6_to_an_ipv6_upstream(upstream6: int) -> None:
    """Clients over IPv6 (UDP and TCP), AAAA and ip6.arpa answers, and forwarding to an
    upstream given as [IPv6]:PORT, again over TCP when its UDP answer is truncated."""
    records = make_records()
    records.register("web.meshnet.local", "fd00::5", "c1", time.time())
    port = free_server_port("::1")
    srv = DnsServer(
        Resolver(records, reverse_networks=["fd00::/64"]),
        upstreams=[parse_upstream(f"[::1]:{upstream6}")],
        timeout=2.0,
        rng=random.Random(1),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.serve, "::1", port)
        for tcp in (False, True):
            six = await ask(port, "web.meshnet.local.", "AAAA", tcp=tcp, server="::1")
            assert addresses(six) == {"fd00::5"}
            reverse = dns.reversename.from_address("fd00::5").to_text()
            ptr = await ask(port, reverse, "PTR", tcp=tcp, server="::1")
            assert addresses(ptr) == {"web.meshnet.local."}
            forwarded = await ask(port, "abcdef.example.", tcp=tcp, server="::1")
            assert addresses(forwarded) == {"192.0.2.6"}
        big = await ask(port, "big.example.", tcp=True, server="::1")
        assert len(addresses(big)) == 60  # UDP from upstream came truncated: TCP to [::1]
        stats = srv.statistics()
        assert (stats.forwarded_ok, stats.upstream_failures) == (3, 0)
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_silent_upstream_means_servfail_within_the_timeout(
    server: tuple[DnsServer, int],
) -> None:
    _, port = server
    started = trio.current_time()
    response = await ask(port, "silent.example.")
    assert response.rcode() == dns.rcode.SERVFAIL
    assert trio.current_time() - started < 2.0  # timeout 1.0 over both upstreams
    assert addresses(await ask(port, "web.meshnet.local.")) == {"10.32.0.5", "10.32.0.6"}


@pytest.mark.trio
async def test_no_upstream_means_servfail() -> None:
    port = free_port()
    srv = DnsServer(Resolver(make_records()), upstreams=[], timeout=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.serve, "127.0.0.1", port)
        assert (await ask(port, "example.com.")).rcode() == dns.rcode.SERVFAIL
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_garbage_over_udp_and_tcp_never_stops_the_server(
    server: tuple[DnsServer, int],
) -> None:
    srv, port = server
    rng = random.Random(3)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.connect(("127.0.0.1", port))
    for _ in range(500):
        await sock.send(rng.randbytes(rng.randint(0, 300)))
    # The burst may overflow the server's receive buffer under load, so the
    # header-only query is asked again until it is answered (or 5 s pass).
    header_only = struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0)
    formerr = False
    with trio.move_on_after(5):
        while not formerr:
            await sock.send(header_only)
            with trio.move_on_after(0.5):
                while not formerr:
                    reply = await sock.recv(65535)
                    formerr = reply[:2] == b"\x00\x07" and reply[3] & 0x0F == dns.rcode.FORMERR
    assert formerr
    sock.close()
    # TCP: a message cut short, then a connection that sends garbage and goes.
    for garbage in (b"\x00\x30\x12\x34", b"\xff\xff" + os.urandom(100)):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(garbage)
        await stream.aclose()
    assert addresses(await ask(port, "web.meshnet.local.", tcp=True))
    assert addresses(await ask(port, "web.meshnet.local."))
    assert srv.statistics().internal_errors == 0


# --- the service: records over two real routers, persistence


def make_router(tmp_path: Path, nick: str, peers: tuple[str, ...] = ()) -> Router:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = Config(
        peers=peers,
        nickname=nick,
        port=port,
        state_dir=tmp_path / nick,
        api_socket=tmp_path / nick / "api.sock",
        heartbeat_interval=0.2,
        dataplane=False,
        dns=DnsSettings(upstreams=("127.0.0.1:9",)),
    )
    name = new_peer_name(os.urandom)
    return Router(config, Identity(name, nick, new_uid(os.urandom)), None)


async def wait_until(check: object, timeout: float = 10) -> None:
    assert callable(check)
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.02)


@pytest.mark.trio
async def test_names_gossip_between_routers_and_hide_when_a_peer_leaves(tmp_path: Path) -> None:
    a = make_router(tmp_path, "a")
    dns_a = DnsService(a.config, a)
    async with trio.open_nursery() as outer:
        await outer.start(a.serve)
        await outer.start(dns_a.serve, None)
        b = make_router(tmp_path, "b", peers=(f"127.0.0.1:{a.config.port}",))
        dns_b = DnsService(b.config, b)
        async with trio.open_nursery() as inner:
            await inner.start(b.serve)
            await inner.start(dns_b.serve, None)
            dns_a.add("c1", "web.meshnet.local.", ["10.32.0.5"])
            await wait_until(lambda: dns_b.records.addresses("web.meshnet.local.") == ["10.32.0.5"])
            lookup = dns_b.dns_lookup({"name": "web"})
            assert lookup == {"name": "web.meshnet.local.", "addresses": ["10.32.0.5"]}
            dns_a.detached("c1", [])
            await wait_until(lambda: dns_b.records.addresses("web.meshnet.local.") == [])
            dns_b.add("c2", "db.meshnet.local.", ["10.32.0.9"])
            await wait_until(lambda: dns_a.records.addresses("db.meshnet.local.") == ["10.32.0.9"])
            status = dns_a.status()
            assert status["state"] == "off (no data plane)"
            assert [e["nickname"] for e in status["entries"]] == ["b"]
            inner.cancel_scope.cancel()
        # b is gone: its records are hidden on a (kept, should it come back).
        await wait_until(lambda: dns_a.records.addresses("db.meshnet.local.") == [])
        assert dns_a.records.statistics().hidden == 1
        outer.cancel_scope.cancel()


@pytest.mark.trio
async def test_own_records_persist_across_a_restart(tmp_path: Path) -> None:
    router = make_router(tmp_path, "a")
    service = DnsService(router.config, router)
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        service.add("c1", "web.meshnet.local.", ["10.32.0.5", "10.32.0.6"])
        service.dns_remove({"container": "c1", "addresses": ["10.32.0.6"]})
        nursery.cancel_scope.cancel()
    assert (router.config.state_dir / STATE_FILE).exists()
    again = Router(router.config, router.identity, None)
    restored = DnsService(again.config, again)
    assert restored.records.addresses("web.meshnet.local.") == ["10.32.0.5"]
    assert restored.records.statistics().tombstones == 1  # the removal is remembered too
    # A damaged file is not fatal: the service starts empty and says so in the log.
    (router.config.state_dir / STATE_FILE).write_bytes(b"\xc1garbage")
    assert len(DnsService(again.config, Router(again.config, again.identity, None)).records) == 0


@pytest.mark.trio
async def test_addresses_taken_back_from_a_gone_container_lose_their_names(
    tmp_path: Path,
) -> None:
    """IPAM gave back a gone namespace's addresses: whatever container key named them, the
    names go (and stay gone after a restart); names of other addresses, and those given to
    addresses outside any container, stay."""
    router = make_router(tmp_path, "a")
    service = DnsService(router.config, router)
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        service.add("gone", "web.meshnet.local.", ["10.32.0.5", "fd00::5"])
        service.add("/proc/77/ns/net", "api.meshnet.local.", ["10.32.0.5"])
        service.add("alive", "web.meshnet.local.", ["10.32.0.6"])
        service.add(EXTERNAL, "db.meshnet.local.", ["10.32.0.5"])
        service.forget_addresses(["10.32.0.5", "fd00:0::5"])
        assert service.dns_lookup({"name": "web"})["addresses"] == ["10.32.0.6"]
        assert service.dns_lookup({"name": "api"})["addresses"] == []
        assert service.dns_lookup({"name": "db"})["addresses"] == ["10.32.0.5"]
        nursery.cancel_scope.cancel()
    restored = DnsService(router.config, Router(router.config, router.identity, None))
    assert restored.records.addresses("web.meshnet.local.") == ["10.32.0.6"]


@pytest.mark.trio
async def test_a_name_for_an_address_outside_any_container(tmp_path: Path) -> None:
    router = make_router(tmp_path, "a")
    service = DnsService(router.config, router)
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        added = await service.dns_add({"container": None, "addresses": ["192.0.2.7"], "name": "db"})
        assert added == {
            "name": "db.meshnet.local.",
            "container": EXTERNAL,
            "addresses": ["192.0.2.7"],
        }
        assert service.dns_lookup({"name": "db"})["addresses"] == ["192.0.2.7"]
        [entry] = service.status()["entries"]
        assert entry["records"] == [
            {"name": "db.meshnet.local.", "address": "192.0.2.7", "container": EXTERNAL}
        ]
        with pytest.raises(UserError, match="give the IP address"):
            await service.dns_add({"name": "db"})
        with pytest.raises(UserError, match=r"^bad address 'x': not an IP address$"):
            await service.dns_add({"addresses": ["x"], "name": "db"})
        # A container's records are not the external ones: removing one leaves the other.
        service.add("c1", "db.meshnet.local.", ["10.32.0.5"])
        assert service.dns_remove({"addresses": ["192.0.2.7"]}) == {
            "container": EXTERNAL,
            "removed": 1,
        }
        assert service.dns_lookup({"name": "db"})["addresses"] == ["10.32.0.5"]
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_without_its_firewall_the_server_stays_off_and_the_router_runs_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_nft(*_: object) -> None:
        raise UserError("nft not found")

    def must_not_run(*_: object) -> None:
        raise AssertionError("the address must never be added without the firewall")

    monkeypatch.setattr(service_module.firewall, "install", no_nft)
    monkeypatch.setattr(service_module, "_add_address", must_not_run)
    router = make_router(tmp_path, "a")
    config = replace(router.config, dns=DnsSettings(addresses=("10.32.0.1/12",), upstreams=()))
    service = DnsService(config, router)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.serve, object())  # any data plane: never reached
        await wait_until(lambda: service.state.startswith("off (no firewall"))
        assert service.status()["listen"] is None
        service.add("c1", "web.meshnet.local.", ["10.32.0.5"])  # records still work
        assert service.dns_lookup({"name": "web"})["addresses"] == ["10.32.0.5"]
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_listen_addresses_of_both_families_come_and_go_behind_the_firewall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every address is covered by the table before it is on the bridge and after it is off;
    the listeners (the ramps) and the reverse networks follow; an address its owner keeps on
    the bridge is never added or removed by DNS."""
    events: list[tuple[str, object]] = []

    def install(_bridge: str, addresses: list[str], *_: object) -> None:
        events.append(("firewall", tuple(addresses)))

    monkeypatch.setattr(service_module.firewall, "install", install)
    monkeypatch.setattr(service_module.firewall, "remove", lambda: events.append(("removed", ())))
    monkeypatch.setattr(service_module, "_add_address", lambda c: events.append(("add", c)))
    monkeypatch.setattr(service_module, "_delete_address", lambda c: events.append(("delete", c)))
    router = make_router(tmp_path, "a")
    settings = DnsSettings(addresses=("10.32.0.1/12",), port=free_port(), upstreams=())
    service = DnsService(replace(router.config, dns=settings), router)
    told: list[tuple[str, ...]] = []

    async def listener(listen: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]):
        told.append(tuple(map(str, listen)))

    service.listen_listeners.append(listener)
    v4, v6, kept = (
        ipaddress.ip_interface(c) for c in ("10.32.0.1/12", "fd00::53/64", "fd00::54/64")
    )
    unknown6 = dns.message.make_query(dns.reversename.from_address("fd00::99"), "PTR").to_wire()
    async with trio.open_nursery() as nursery:
        await nursery.start(service.serve, object())  # any data plane: never used here
        await wait_until(lambda: service.listen == (v4,))
        assert service.resolver is not None
        assert isinstance(service.resolver.answer(unknown6, random.Random(0)), Forward)
        service.listen_on(v6)
        await wait_until(lambda: service.listen == (v4, v6))
        status = service.status()
        assert status["listen"] == "10.32.0.1/12"  # IPv4 first, for one-nameserver clients
        assert status["listen_addresses"] == ["10.32.0.1/12", "fd00::53/64"]
        reply = service.resolver.answer(unknown6, random.Random(0))
        assert isinstance(reply, Reply) and reply.wire[3] & 0xF == dns.rcode.NXDOMAIN
        service.stop_listening_on(v6)
        await wait_until(lambda: service.listen == (v4,))
        service.listen_on(kept, add_address=False)
        await wait_until(lambda: service.listen == (v4, kept))
        with pytest.raises(UserError):
            service.listen_on(ipaddress.ip_interface("fd00::55/128"))
        nursery.cancel_scope.cancel()
    assert events == [
        ("firewall", ("10.32.0.1",)),
        ("add", "10.32.0.1/12"),
        ("firewall", ("10.32.0.1", "fd00::53")),
        ("add", "fd00::53/64"),
        ("delete", "fd00::53/64"),
        ("firewall", ("10.32.0.1",)),
        ("firewall", ("10.32.0.1", "fd00::54")),
        *events[7:],
    ]
    # Cancelled: each address off the bridge before the table stops covering it, in whatever
    # order the two tasks end; at the end no table is left.
    on_bridge: set[str] = set()
    for kind, what in events:
        if kind == "add":
            on_bridge.add(str(what).split("/")[0])
        elif kind == "delete":
            on_bridge.discard(str(what).split("/")[0])
        else:
            assert on_bridge <= set(what)  # type: ignore[call-overload]
    assert on_bridge == set() and events[-1] == ("removed", ())
    assert told == [
        ("10.32.0.1/12",),
        ("10.32.0.1/12", "fd00::53/64"),
        ("10.32.0.1/12",),
        ("10.32.0.1/12", "fd00::54/64"),
        *told[4:],
    ]
    assert told[-1] == ()


@pytest.mark.trio
async def test_an_address_that_fails_leaves_the_other_family_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def add(cidr: str) -> None:
        if ":" in cidr:
            raise OSError(99, "Cannot assign requested address")

    monkeypatch.setattr(service_module.firewall, "install", lambda *_: None)
    monkeypatch.setattr(service_module.firewall, "remove", lambda: None)
    monkeypatch.setattr(service_module, "_add_address", add)
    monkeypatch.setattr(service_module, "_delete_address", lambda _: None)
    router = make_router(tmp_path, "a")
    settings = DnsSettings(
        addresses=("fd00::53/64", "10.32.0.1/12"), port=free_port(), upstreams=()
    )
    service = DnsService(replace(router.config, dns=settings), router)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.serve, object())
        await wait_until(lambda: service.status()["listen_errors"] and service.listen)
        status = service.status()
        assert status["state"] == "serving" and status["listen_addresses"] == ["10.32.0.1/12"]
        assert status["listen_errors"] == [
            "cannot serve DNS on fd00::53/64: [Errno 99] Cannot assign requested address"
        ]
        service.stop_listening_on(ipaddress.ip_interface("10.32.0.1/12"))
        await wait_until(lambda: not service.listen)
        assert service.status()["state"].startswith("off (cannot serve DNS on fd00::53/64")
        service.stop_listening_on(ipaddress.ip_interface("fd00::53/64"))
        assert service.status()["listen_errors"] == []
        nursery.cancel_scope.cancel()


@pytest.mark.trio
@pytest.mark.parametrize("given", [False, True], ids=["from-ipam", "dns-address"])
async def test_the_servers_ipv6_address_is_reserved_in_ipam(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: bool
) -> None:
    """The host's IPv6 DNS address, taken from the IPv6 ring or given with --dns-address inside
    it, is held in IPAM for the server: no container can be given it, here or elsewhere."""
    monkeypatch.setattr(service_module.firewall, "install", lambda *_: None)
    monkeypatch.setattr(service_module.firewall, "remove", lambda: None)
    monkeypatch.setattr(service_module, "_add_address", lambda _: None)
    monkeypatch.setattr(service_module, "_delete_address", lambda _: None)
    router = make_router(tmp_path, "a")
    owner = "dns:" + format_peer_name(router.identity.name)
    wanted = ("10.32.0.53/24", "fd00:53::35/64") if given else ()
    settings = DnsSettings(addresses=wanted, port=free_port(), upstreams=())
    net = FakeNet()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.pump)
        config = IpamConfig(name=1, range=RANGE, mode=InitMode.CONSENSUS, consensus_size=1)
        range6 = Ipv6Settings(range=ipaddress.IPv6Network("fd00:53::/48"))
        ipam = await start(nursery, net, tmp_path, 1, config, ipv6=range6)
        service = DnsService(replace(router.config, dns=settings), router, ipam)
        await nursery.start(service.serve, SimpleNamespace(overlay_mtu=1354))  # (its MTU only)
        await wait_until(lambda: len(ipam.holders("dns:").get(owner, [])) == 2)
        held = [ipaddress.ip_interface(a) for a in ipam.holders("dns:")[owner]]
        six = next(a for a in held if a.version == 6)
        if given:
            assert str(six.ip) == "fd00:53::35"
        with pytest.raises(AddressInUse):
            await ipam.claim("a-container", ipaddress.IPv6Interface(f"{six.ip}/64"))
        given6 = {await ipam.allocate6(f"c{i}") for i in range(8)}
        assert six.ip not in {a.ip for a in given6}
        nursery.cancel_scope.cancel()
