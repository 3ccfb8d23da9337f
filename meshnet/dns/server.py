"""The DNS server's trio shell: UDP and TCP sockets, and upstream servers for foreign names.

Every query goes through ``Resolver.answer`` (the pure core), and the shell acts on the
decision: send the reply, ask the upstream servers, or send nothing. Nothing a client sends can
stop it: malformed input is the core's business (FORMERR or nothing), and anything unexpected
in the shell is counted and logged (rate-limited), never raised.

UDP is read in batches from a non-blocking socket after one ``wait_readable``: a trio task per
datagram would cost more than answering it (the core answers a local name in ~3 us).
Forwarded queries each get a task, bounded by ``MAX_FORWARDS``; beyond that the client gets
SERVFAIL at once. Upstream queries use dnspython's async functions on its trio backend, over
UDP first and again over TCP when the answer is truncated, each server in turn within one
overall timeout; on failure the client gets SERVFAIL.
"""

from __future__ import annotations

import collections
import errno
import logging
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import trio

from meshnet.dns.answer import Drop, Forward, Reply, Resolver, servfail, truncate_for_udp

log = logging.getLogger("meshnet.dns")

#: Datagrams read per wake-up before letting other tasks run.
UDP_BATCH = 64
MAX_FORWARDS = 256
MAX_TCP_CONNECTIONS = 64
TCP_IDLE_TIMEOUT = 10.0
RECEIVE_BUFFER = 1 << 20
#: Log the same kind of trouble at most this often (malformed floods must not flood the log).
LOG_EVERY = 10.0
_IP_FREEBIND = 15


@dataclass(frozen=True)
class ServerStatistics:
    udp_queries: int
    tcp_queries: int
    tcp_connections: int
    replies: int
    dropped: int
    forwarded_ok: int
    upstream_failures: int
    forward_overload: int
    send_errors: int
    internal_errors: int


class DnsServer:
    """Serves ``resolver`` on one address; ``upstreams``: (address, port) pairs, asked in order."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        upstreams: Sequence[tuple[str, int]],
        timeout: float,
        nickname: str = "",
        rng: random.Random | None = None,
    ) -> None:
        self.resolver = resolver
        self.upstreams = list(upstreams)
        self.timeout = timeout
        self._nick = nickname
        self._rng = rng or random.Random()
        self._ids = random.SystemRandom()
        self._forwards = trio.Semaphore(MAX_FORWARDS)
        self._tcp_open = 0
        self._counts: collections.Counter[str] = collections.Counter()
        self._logged: dict[str, float] = {}
        self._backend = dns.asyncbackend.get_backend("trio")

    def statistics(self) -> ServerStatistics:
        c = self._counts
        return ServerStatistics(
            udp_queries=c["udp_queries"],
            tcp_queries=c["tcp_queries"],
            tcp_connections=c["tcp_connections"],
            replies=c["replies"],
            dropped=c["dropped"],
            forwarded_ok=c["forwarded_ok"],
            upstream_failures=c["upstream_failures"],
            forward_overload=c["forward_overload"],
            send_errors=c["send_errors"],
            internal_errors=c["internal_errors"],
        )

    async def serve(
        self,
        address: str,
        port: int,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``address``:``port`` (UDP and TCP) until cancelled."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            udp.setsockopt(socket.SOL_IP, _IP_FREEBIND, 1)
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            udp.bind((address, port))
            udp.setblocking(False)
            tcp = trio.socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.setsockopt(socket.SOL_IP, _IP_FREEBIND, 1)
            await tcp.bind((address, port))
            tcp.listen(64)
            listener = trio.SocketListener(tcp)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._udp_loop, udp, nursery)
                nursery.start_soon(trio.serve_listeners, self._tcp_connection, [listener])
                task_status.started()
        finally:
            udp.close()

    # --- UDP

    async def _udp_loop(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        rng = self._rng
        answer = self.resolver.answer
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(UDP_BATCH):
                try:
                    data, peer = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                except OSError as e:  # e.g. ECONNREFUSED from an ICMP error: nothing to do
                    self._trouble("udp_receive_error", f"UDP receive failed: {e}")
                    continue
                self._counts["udp_queries"] += 1
                try:
                    decision = answer(data, rng)
                    if isinstance(decision, Reply):
                        self._send_udp(
                            sock, truncate_for_udp(decision.wire, decision.udp_size), peer
                        )
                    elif isinstance(decision, Forward):
                        self._forward_udp(sock, nursery, data, decision, peer)
                    else:
                        self._drop(decision, peer)
                except Exception as e:  # the core never raises; this guards the shell itself
                    self._trouble("internal_errors", f"failed on a query from {peer}: {e!r}")

    def _send_udp(self, sock: socket.socket, wire: bytes, peer: Any) -> None:
        try:
            sock.sendto(wire, peer)
            self._counts["replies"] += 1
        except OSError as e:  # EAGAIN under overload: the client retries, as over any UDP
            self._trouble(
                "send_errors", f"UDP send to {peer} failed: {errno.errorcode.get(e.errno or 0, e)}"
            )

    def _forward_udp(
        self,
        sock: socket.socket,
        nursery: trio.Nursery,
        query_wire: bytes,
        decision: Forward,
        peer: Any,
    ) -> None:
        if not self._forwards.value:
            self._counts["forward_overload"] += 1
            self._send_udp(sock, servfail(query_wire), peer)
            return
        self._forwards.acquire_nowait()

        async def run() -> None:
            try:
                wire = await self._ask_upstream(query_wire, decision)
                self._send_udp(sock, truncate_for_udp(wire, decision.udp_size), peer)
            finally:
                self._forwards.release()

        nursery.start_soon(run)

    def _drop(self, decision: Drop, peer: Any) -> None:
        self._counts["dropped"] += 1
        self._trouble("drop_log", f"dropped a query from {peer}: {decision.reason}", count=False)

    # --- TCP (RFC 7766: two-byte length, several queries per connection)

    async def _tcp_connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self._tcp_open >= MAX_TCP_CONNECTIONS:
                self._trouble("tcp_refused", "too many DNS TCP connections: closing one")
                return
            self._tcp_open += 1
            self._counts["tcp_connections"] += 1
            try:
                await self._tcp_queries(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            finally:
                self._tcp_open -= 1

    async def _tcp_queries(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        while True:
            with trio.move_on_after(TCP_IDLE_TIMEOUT) as idle:
                while len(buffer) < 2 or len(buffer) < 2 + int.from_bytes(buffer[:2], "big"):
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buffer += chunk
            if idle.cancelled_caught:
                return
            size = int.from_bytes(buffer[:2], "big")
            query = bytes(buffer[2 : 2 + size])
            del buffer[: 2 + size]
            self._counts["tcp_queries"] += 1
            try:
                decision = self.resolver.answer(query, self._rng)
                if isinstance(decision, Reply):
                    wire = decision.wire
                elif isinstance(decision, Forward):
                    async with self._forwards:
                        wire = await self._ask_upstream(query, decision)
                else:
                    self._drop(decision, stream.socket.getpeername())
                    continue
            except Exception as e:
                self._trouble("internal_errors", f"failed on a TCP query: {e!r}")
                return
            await stream.send_all(len(wire).to_bytes(2, "big") + wire)
            self._counts["replies"] += 1

    # --- upstream

    async def _ask_upstream(self, query_wire: bytes, decision: Forward) -> bytes:
        """The upstream answer to relay, or SERVFAIL when no server answered in time."""
        query = decision.query
        client_id = query.id
        deadline = trio.current_time() + self.timeout
        for i, (address, port) in enumerate(self.upstreams):
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                break
            # A fresh id towards upstream: the client's is not ours to expose (nor guessable).
            query.id = self._ids.randrange(65536)
            share = remaining / (len(self.upstreams) - i)
            try:
                with trio.fail_after(share):
                    response = await dns.asyncquery.udp(
                        query,
                        address,
                        timeout=share,
                        port=port,
                        backend=self._backend,
                        ignore_unexpected=True,
                    )
                if response.flags & dns.flags.TC:
                    with trio.fail_after(max(deadline - trio.current_time(), 0.001)):
                        response = await dns.asyncquery.tcp(
                            query,
                            address,
                            port=port,
                            backend=self._backend,
                        )
                response.id = client_id
                wire: bytes = response.to_wire(max_size=65535)
            except (
                trio.TooSlowError,
                dns.exception.DNSException,
                OSError,
                EOFError,
                ValueError,
            ) as e:
                self._trouble(
                    "upstream_failures",
                    f"upstream {address}:{port} failed for {query.question[0].name}: "
                    f"{type(e).__name__} {e}",
                )
                continue
            self._counts["forwarded_ok"] += 1
            return wire
        if not self.upstreams:
            self._trouble("upstream_failures", "no upstream DNS server to forward to")
        return servfail(query_wire)

    def _trouble(self, kind: str, message: str, *, count: bool = True) -> None:
        if count:
            self._counts[kind] += 1
        now = time.monotonic()
        if now - self._logged.get(kind, -LOG_EVERY) >= LOG_EVERY:
            self._logged[kind] = now
            log.warning("%s: %s", self._nick, message)
