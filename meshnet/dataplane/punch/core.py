"""Hole punching: direct UDP paths between peers that both sit behind NATs (pure).

Two routers behind NATs cannot dial each other; the mesh relays their traffic through a peer
both reach. Where their NATs keep a host's port for every destination (a home router's
`masquerade`), a direct path can still be made:

1. **Reflexive addresses.** Each router tells every neighbour where that neighbour's
   heartbeats come from (``Seen``): STUN over the mesh. A router's *candidates* are the reported
   endpoints (Linux's `masquerade` keeps one mapping per inner address and port for every
   destination: measured in the lab), then each reported address with our own port (a NAT that
   maps per destination but keeps the port where it can). If two neighbours report different
   ports for one address, our NAT maps ports per destination (symmetric): nobody can guess the
   port it would use towards a new peer, so punching is not tried from behind it.
2. **Offer and answer, through the mesh.** Of two peers that exchange traffic without a control
   connection, the one with the lower name offers: its candidates and, with a password, a fresh
   X25519 public key. Mesh unicasts travel hop by hop over authenticated control connections,
   through the peers both reach: the mutual peer carries the coordination. The answer carries
   the other side's candidates and key; both derive the path's keys from the exchange.
3. **Punching.** The answering side starts heartbeats to the offerer's candidates before it
   answers, the offerer when the answer arrives; each heartbeat goes to every candidate until
   one answers, and the path then stays where the answers come from. Each side's first
   datagram opens its own NAT for the other's. A NAT that sees the other side's datagram
   *before* its own host's first one makes an entry for it (addressed to the NAT itself), and
   then has to map its host to another port, which the other side never learns (Linux
   conntrack; measured in the lab: both sides started within a millisecond, neither got
   through). So the answering side's heartbeats leave with a TTL of ``PUNCH_TTL`` until it
   hears from the offerer: enough to open its own NAT, too little to reach the offerer's.
   Every other attempt uses the normal TTL instead, in case the NAT is further away than that.
   The path is then an ordinary ``UdpPath``, established once heartbeats flow both ways; both
   sides list it in their topology entries and every peer's data routes use it.
4. **Failure.** An attempt not established within ``ATTEMPT_TIMEOUT``, or a punched path that
   dies (a NAT lost its mapping), is dropped, so traffic is relayed again at once, and is tried
   again after a back-off doubling from ``RETRY_AFTER`` up to ``MAX_RETRY_AFTER``.

Everything here is keyed by what peers send, so it is capped: ``MAX_CANDIDATES`` endpoints,
``MAX_ATTEMPTS`` peers being punched or punched at once, ``MAX_TRACKED`` back-off records.
"""

from __future__ import annotations

import collections
import hashlib
import ipaddress
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
from nacl.public import Box, PrivateKey, PublicKey

from meshnet.errors import RemoteProtocolError

CHANNEL = "punch"
MAX_CANDIDATES = 4
MAX_ATTEMPTS = 32
MAX_TRACKED = 1024
PUNCH_TTL = 2  # through our own NAT (one hop beyond us) and no further
ATTEMPT_TIMEOUT = 10.0
RETRY_AFTER = 15.0
RETRY_SOON = 2.0  # the peer did not know its own address yet
SYMMETRIC, UNKNOWN = "symmetric", "unknown"
MAX_RETRY_AFTER = 600.0
_KEY_PERSON = b"meshnet-punch"

Endpoint = tuple[str, int]


class NatKind:
    """What our neighbours' reports say about the NAT in front of us (``nat_kind``)."""

    NONE = "none"  # they see one of our own addresses
    PRESERVING = "port-preserving"  # another address, our own port: punching can work
    CHANGING = "port-changing"  # another port (a collision, or random): punching may fail
    SYMMETRIC = "symmetric"  # a different port per neighbour: it cannot work


# --- messages -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """A neighbour tells us where our heartbeats come from, as it sees them."""

    endpoint: Endpoint


@dataclass(frozen=True)
class Offer:
    """Our candidates and key for a direct path; ``answer``: the reply to the peer's offer."""

    session: int
    candidates: tuple[Endpoint, ...]
    public_key: bytes | None
    answer: bool = False
    # An answer without candidates says why: our NAT is symmetric, or we do not know yet.
    unpunchable: str | None = None


Message = Seen | Offer


def encode(message: Message) -> bytes:
    if isinstance(message, Seen):
        obj: dict[str, Any] = {"t": "seen", "e": _endpoint_text(message.endpoint)}
    else:
        obj = {
            "t": "answer" if message.answer else "offer",
            "s": message.session,
            "c": [_endpoint_text(c) for c in message.candidates],
            "k": message.public_key,
        }
        if message.unpunchable is not None:
            obj["u"] = message.unpunchable
    return bytes(msgpack.packb(obj, use_bin_type=True))


def decode(payload: bytes) -> Message:
    """RemoteProtocolError for anything but a well-formed message."""
    if len(payload) > 1024:
        raise RemoteProtocolError("punch message too long")
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as e:
        raise RemoteProtocolError(f"undecodable punch message: {e}") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("malformed punch message")
    kind = obj.get("t")
    if kind == "seen":
        return Seen(_parse_endpoint(obj.get("e")))
    if kind not in ("offer", "answer"):
        raise RemoteProtocolError("unknown punch message")
    session, candidates, key = obj.get("s"), obj.get("c"), obj.get("k")
    if type(session) is not int or not 0 < session < 1 << 63:
        raise RemoteProtocolError("malformed punch session")
    if not isinstance(candidates, list) or len(candidates) > MAX_CANDIDATES:
        raise RemoteProtocolError("malformed punch candidates")
    if key is not None and (not isinstance(key, bytes) or len(key) != PublicKey.SIZE):
        raise RemoteProtocolError("malformed punch key")
    unpunchable = obj.get("u")
    if unpunchable not in (None, SYMMETRIC, UNKNOWN) or (unpunchable and candidates):
        raise RemoteProtocolError("malformed punch refusal")
    return Offer(
        session,
        tuple(_parse_endpoint(c) for c in candidates),
        key,
        answer=kind == "answer",
        unpunchable=unpunchable,
    )


def _endpoint_text(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_endpoint(value: Any) -> Endpoint:
    if not isinstance(value, str) or len(value) > 64:
        raise RemoteProtocolError("malformed punch endpoint")
    host, sep, port = value.rpartition(":")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise RemoteProtocolError("malformed punch endpoint") from None
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise RemoteProtocolError("malformed punch endpoint")
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise RemoteProtocolError("punch endpoint is not a host's address")
    return str(ip), int(port)


# --- state --------------------------------------------------------------------------------------


@dataclass
class Attempt:
    """A direct path to ``peer`` being made (``theirs`` empty until the answer) or made."""

    peer: int
    session: int
    started: float
    secret: PrivateKey | None
    theirs: tuple[Endpoint, ...] = ()
    keys: tuple[bytes, bytes] | None = None  # (send, receive) once both keys are known
    up: bool = False
    ttl: int | None = None  # our heartbeats' TTL until we hear from them (None: the normal)

    @property
    def punching(self) -> bool:
        return bool(self.theirs) and not self.up


@dataclass
class _Record:
    """What status shows per peer, and when to try it next."""

    attempts: int = 0
    successes: int = 0
    failures: int = 0
    next_try: float = 0.0
    reason: str | None = None


@dataclass
class Punching:
    """Reflexive addresses, attempts and back-off; the shell does the sending."""

    local: int
    local_port: int
    encrypted: bool
    local_ips: frozenset[str] = frozenset()
    rng: random.Random = field(default_factory=random.Random)
    reflexive: dict[int, Endpoint] = field(default_factory=dict)  # neighbour -> what it sees
    attempts: dict[int, Attempt] = field(default_factory=dict)
    records: collections.OrderedDict[int, _Record] = field(default_factory=collections.OrderedDict)
    counters: collections.Counter[str] = field(default_factory=collections.Counter)

    # --- reflexive addresses

    def seen_by(self, neighbour: int, endpoint: Endpoint) -> None:
        self.reflexive[neighbour] = endpoint

    def neighbours_are(self, neighbours: Iterable[int]) -> None:
        keep = set(neighbours)
        for gone in [n for n in self.reflexive if n not in keep]:
            del self.reflexive[gone]

    def candidates(self) -> tuple[Endpoint, ...]:
        """Where a peer may reach us directly, best guess first (see the module's notes)."""
        counts = collections.Counter(self.reflexive.values())
        ranked = sorted(counts, key=lambda e: (-counts[e], e))
        guesses = [(ip, self.local_port) for ip, _ in ranked]
        return tuple(dict.fromkeys(ranked + guesses))[:MAX_CANDIDATES]

    def nat_kind(self) -> str | None:
        """None while no neighbour has told us anything."""
        seen = set(self.reflexive.values())
        if not seen:
            return None
        if all(ip in self.local_ips for ip, _ in seen):
            return NatKind.NONE
        ports: dict[str, set[int]] = {}
        for ip, port in seen:
            ports.setdefault(ip, set()).add(port)
        if any(len(p) > 1 for p in ports.values()):
            return NatKind.SYMMETRIC
        if {port for _, port in seen} == {self.local_port}:
            return NatKind.PRESERVING
        return NatKind.CHANGING

    def can_punch(self) -> str | None:
        """None if we may take part; else why not (what status shows)."""
        kind = self.nat_kind()
        if kind is None:
            return "no neighbour has told us our address yet"
        if kind == NatKind.SYMMETRIC:
            return "our NAT maps ports per destination (symmetric): it cannot be punched"
        if kind == NatKind.NONE:
            return None
        return None

    # --- attempts

    def may_offer(self) -> bool:
        """Only from behind a NAT that can be punched: a host that is not behind one is dialled
        by whoever can reach it (discovery), so a peer it is not connected to cannot."""
        return self.can_punch() is None and self.nat_kind() != NatKind.NONE

    def offers(self, now: float, wanted: Iterable[int]) -> list[tuple[int, Offer]]:
        """Offers to send now: to each wanted peer above us in name order that has no attempt
        and whose back-off is over (see ``may_offer``)."""
        if not self.may_offer():
            return []
        out = []
        for peer in sorted(wanted):
            if peer <= self.local or peer in self.attempts or len(self.attempts) >= MAX_ATTEMPTS:
                continue
            record = self._record(peer)
            if now < record.next_try:
                continue
            secret = PrivateKey.generate() if self.encrypted else None
            attempt = Attempt(peer, self.rng.randrange(1, 1 << 63), now, secret)
            self.attempts[peer] = attempt
            record.attempts += 1
            self.counters["attempts"] += 1
            out.append((peer, self._offer(attempt, answer=False)))
        return out

    def on_offer(self, peer: int, offer: Offer, now: float) -> tuple[Offer, Attempt | None] | None:
        """A peer's offer: our answer and the attempt to start punching; an answer without
        candidates when our NAT cannot be punched (so the offerer knows why); None (counted)
        for an offer we ignore."""
        refused = self._refuse(peer, offer)
        if refused is None and peer > self.local:
            refused = "offer_out_of_turn"  # the lower name offers; ours is on its way
        if refused is None and self.can_punch() is not None:
            self.counters["offer_unpunchable"] += 1
            why = SYMMETRIC if self.nat_kind() == NatKind.SYMMETRIC else UNKNOWN
            return Offer(offer.session, (), None, answer=True, unpunchable=why), None
        if refused is None and peer not in self.attempts and len(self.attempts) >= MAX_ATTEMPTS:
            refused = "offer_over_capacity"
        if refused is not None:
            self.counters[refused] += 1
            return None
        old = self.attempts.get(peer)
        if old is not None and old.session == offer.session:
            return self._offer(old, answer=True), old  # a repeat: same answer
        secret = PrivateKey.generate() if self.encrypted else None
        attempt = Attempt(peer, offer.session, now, secret, offer.candidates)
        attempt.keys = self._keys(attempt, offer.public_key)
        self.attempts[peer] = attempt
        record = self._record(peer)
        record.attempts += 1
        attempt.ttl = PUNCH_TTL if record.attempts % 2 else None
        self.counters["attempts"] += 1
        return self._offer(attempt, answer=True), attempt

    def on_answer(self, peer: int, answer: Offer, now: float) -> Attempt | None:
        attempt = self.attempts.get(peer)
        if attempt is not None and attempt.session == answer.session and answer.unpunchable:
            if answer.unpunchable == SYMMETRIC:
                self.failed(peer, now, "their NAT maps ports per destination (symmetric)")
            else:
                self.failed(peer, now, "they did not know their address yet", RETRY_SOON)
            return None
        refused = self._refuse(peer, answer)
        if refused is None and (attempt is None or attempt.session != answer.session):
            refused = "answer_unexpected"
        if refused is None and attempt is not None and attempt.theirs:
            refused = "answer_repeated"
        if refused is not None or attempt is None:
            self.counters[refused or "answer_unexpected"] += 1
            return None
        attempt.theirs = answer.candidates
        attempt.keys = self._keys(attempt, answer.public_key)
        return attempt

    def established(self, peer: int) -> None:
        attempt = self.attempts.get(peer)
        if attempt is None or attempt.up:
            return
        attempt.up = True
        record = self._record(peer)
        record.successes += 1
        record.failures = 0
        record.reason = None
        self.counters["successes"] += 1

    def expired(self, now: float) -> list[int]:
        """Attempts that did not get through in time: failed (the shell drops their paths)."""
        late = [
            p for p, a in self.attempts.items() if not a.up and now - a.started > ATTEMPT_TIMEOUT
        ]
        for peer in late:
            self.failed(peer, now, "no heartbeat got through (their NAT or ours filters it)")
        return late

    def failed(self, peer: int, now: float, reason: str, retry: float | None = None) -> None:
        """An attempt failed or a punched path died: try again after a back-off (or after
        ``retry`` seconds, for a failure that says nothing about the NATs)."""
        attempt = self.attempts.pop(peer, None)
        if attempt is None:
            return
        record = self._record(peer)
        record.reason = reason
        if retry is None:
            record.failures += 1
            retry = min(RETRY_AFTER * 2 ** (record.failures - 1), MAX_RETRY_AFTER)
            self.counters["failures" if not attempt.up else "lost"] += 1
        record.next_try = now + retry * self.rng.uniform(0.8, 1.2)

    def forget(self, peer: int) -> None:
        """The peer left the mesh, or became a neighbour (its path is direct anyway)."""
        self.attempts.pop(peer, None)
        self.records.pop(peer, None)

    def status(self, now: float, nick: Mapping[int, str]) -> dict[str, Any]:
        peers = {}
        for peer, record in self.records.items():
            attempt = self.attempts.get(peer)
            state = "punched" if attempt and attempt.up else "punching" if attempt else "relayed"
            peers[nick.get(peer, f"{peer:012x}")] = {
                "state": state,
                "attempts": record.attempts,
                "successes": record.successes,
                "failures": record.failures,
                "retry_in": round(max(record.next_try - now, 0.0), 1) if not attempt else None,
                "reason": record.reason,
            }
        return {
            "nat": self.nat_kind(),
            "candidates": [_endpoint_text(c) for c in self.candidates()],
            "unpunchable": self.can_punch(),
            "peers": peers,
            "counters": dict(self.counters),
        }

    # --- helpers

    def _record(self, peer: int) -> _Record:
        record = self.records.pop(peer, None) or _Record()
        self.records[peer] = record  # most recently used last
        while len(self.records) > MAX_TRACKED:
            oldest = next(iter(self.records))
            self.records.pop(oldest)
            self.attempts.pop(oldest, None)
        return record

    def _refuse(self, peer: int, offer: Offer) -> str | None:
        if peer == self.local:
            return "offer_from_self"
        if not offer.candidates:
            return "offer_without_candidates"
        if self.encrypted and offer.public_key is None:
            return "offer_without_key"
        return None

    def _offer(self, attempt: Attempt, *, answer: bool) -> Offer:
        public = bytes(attempt.secret.public_key) if attempt.secret is not None else None
        return Offer(attempt.session, self.candidates(), public, answer=answer)

    def _keys(self, attempt: Attempt, their_public: bytes | None) -> tuple[bytes, bytes] | None:
        """The path's (send, receive) keys: one X25519 exchange, one key per direction."""
        if attempt.secret is None or their_public is None:
            return None
        shared = Box(attempt.secret, PublicKey(their_public)).shared_key()

        def key(sender: int, receiver: int) -> bytes:
            data = sender.to_bytes(6, "big") + receiver.to_bytes(6, "big")
            data += attempt.session.to_bytes(8, "big")
            return hashlib.blake2b(data, key=shared, person=_KEY_PERSON, digest_size=32).digest()

        return key(self.local, attempt.peer), key(attempt.peer, self.local)
