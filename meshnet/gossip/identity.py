"""Who a peer is: its persistent 48-bit name, its nickname and a per-start uid.

The name is shown MAC-style because it is generated like a MAC (locally administered, unicast) and
operators already read those. It persists in the state directory so a restarted daemon keeps its
place in the topology and IPAM ring; the uid changes on every start so peers can tell a restart
from a reconnect.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meshnet.errors import UserError
from meshnet.gossip.messages import MAX_PEER_NAME
from meshnet.statefile import write_atomically

MAX_UID = (1 << 64) - 1
MAX_NICKNAME_LENGTH = 64
PEER_NAME_FILE = "peer-name"

_PEER_NAME_RE = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
_LOCALLY_ADMINISTERED = 0x02
_MULTICAST = 0x01

Rng = Callable[[int], bytes]
"""Source of randomness, e.g. ``os.urandom``; passed in so tests are reproducible."""


def format_peer_name(name: int) -> str:
    """The MAC-style text of a peer name, e.g. ``"aa:bb:cc:dd:ee:ff"``."""
    if type(name) is not int or not 0 <= name <= MAX_PEER_NAME:
        raise ValueError(f"peer name out of range: {name!r}")
    return ":".join(f"{octet:02x}" for octet in name.to_bytes(6, "big"))


def parse_peer_name(text: str) -> int:
    """Parse ``"aa:bb:cc:dd:ee:ff"`` (any case); UserError since the text comes from a user."""
    if not _PEER_NAME_RE.fullmatch(text):
        raise UserError(
            f"bad peer name {text!r:.40}: expected six hex octets like aa:bb:cc:dd:ee:ff"
        )
    return int(text.replace(":", ""), 16)


def _random_bytes(rng: Rng, count: int) -> bytes:
    data = rng(count)
    if len(data) != count:
        raise ValueError(f"rng returned {len(data)} bytes, wanted {count}")
    return data


def new_peer_name(rng: Rng) -> int:
    """A random name that cannot clash with a vendor-assigned MAC or look like multicast."""
    octets = bytearray(_random_bytes(rng, 6))
    octets[0] = (octets[0] | _LOCALLY_ADMINISTERED) & ~_MULTICAST & 0xFF
    return int.from_bytes(octets, "big")


def new_uid(rng: Rng) -> int:
    """A random 64-bit id for this daemon start."""
    return int.from_bytes(_random_bytes(rng, 8), "big")


def load_or_create_peer_name(state_dir: Path, rng: Rng) -> int:
    """The name stored in ``state_dir/peer-name``, created on first start.

    Creation writes a temporary file in the same directory, fsyncs it and renames it into place,
    so a crash leaves either no file or a complete one, never a half-written name.
    """
    path = state_dir / PEER_NAME_FILE
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        pass
    except UnicodeDecodeError:
        raise UserError(f"corrupt peer name file {path}: not ASCII text") from None
    except OSError as error:
        raise UserError(f"cannot read peer name file {path}: {error.strerror}") from None
    else:
        try:
            return parse_peer_name(text.strip())
        except UserError:
            raise UserError(
                f"corrupt peer name file {path}: {text.strip()!r:.40} is not a peer name"
                " (delete it to get a new name)"
            ) from None

    name = new_peer_name(rng)
    try:
        write_atomically(path, format_peer_name(name) + "\n")
    except OSError as error:
        raise UserError(f"cannot write peer name file {path}: {error.strerror}") from None
    return name


def printable(text: str, limit: int = MAX_NICKNAME_LENGTH) -> str:
    """Text a peer sent, made safe to print in logs, status and the TUI: at most ``limit``
    characters, each non-printable one (control characters, terminal escapes, bidi overrides,
    line breaks) replaced by U+FFFD.

    Applied where such text is decoded from the wire and kept (topology's nicknames, which any
    peer relays for any other): replacing rather than refusing, because refusing would close
    the connection to an honest neighbour that only relayed it.
    """
    text = text[:limit]
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


@dataclass(frozen=True)
class Identity:
    """A peer as others see it; validates itself so a bad nickname fails at startup, not later."""

    name: int
    nickname: str
    uid: int

    def __post_init__(self) -> None:
        if type(self.name) is not int or not 0 <= self.name <= MAX_PEER_NAME:
            raise UserError(f"peer name out of range: {self.name!r}")
        if (
            not isinstance(self.nickname, str)
            or not 0 < len(self.nickname) <= MAX_NICKNAME_LENGTH
            or not self.nickname.isprintable()  # it goes into log lines
        ):
            raise UserError(
                f"nickname must be 1..{MAX_NICKNAME_LENGTH} printable characters: {self.nickname!r}"
            )
        if type(self.uid) is not int or not 0 <= self.uid <= MAX_UID:
            raise UserError(f"uid out of range: {self.uid!r}")

    def __str__(self) -> str:
        """``name(nickname)``, the form every log line about a peer uses."""
        return f"{format_peer_name(self.name)}({self.nickname})"
