"""What the user said about targets, kept across restarts (Weave's ``--resume``).

`meshnet connect` and `meshnet forget` change what the router dials; a restart (a reboot, a
package upgrade) must not undo that. So the router keeps, in ``STATE_DIR/targets.json``, the
addresses added by `connect` and those dropped by `forget` (launch peers too: a systemd unit
launches with the same peers every time, and a forgotten one stays forgotten). At launch the
router dials the launch peers minus the forgotten ones, plus the added ones; `launch
--no-resume` starts clean (and clears the file).

``SavedTargets`` is the pure value; ``load`` and ``save`` are the file (written atomically).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from meshnet.statefile import set_aside, write_atomically

STATE_FILE = "targets.json"
log = logging.getLogger("meshnet.targets")


@dataclass(frozen=True)
class SavedTargets:
    """Addresses (normalized, HOST:PORT) added by `connect` and dropped by `forget`."""

    added: frozenset[str] = frozenset()
    forgotten: frozenset[str] = frozenset()

    def resumed(self, launch_peers: Iterable[str]) -> tuple[str, ...]:
        """What a launch with ``launch_peers`` dials: in their order, then the added ones."""
        peers = [p for p in dict.fromkeys(launch_peers) if p not in self.forgotten]
        return (*peers, *sorted(self.added - set(peers)))

    def connected(self, addresses: Iterable[str]) -> SavedTargets:
        wanted = frozenset(addresses)
        return SavedTargets(self.added | wanted, self.forgotten - wanted)

    def forgot(self, addresses: Iterable[str]) -> SavedTargets:
        dropped = frozenset(addresses)
        return SavedTargets(self.added - dropped, self.forgotten | dropped)

    def replaced(self, current: Iterable[str], addresses: Iterable[str]) -> SavedTargets:
        """`connect --replace`: ``addresses`` are the targets now, the ``current`` ones are
        forgotten (those given at launch included)."""
        wanted = frozenset(addresses)
        return SavedTargets(wanted, (self.forgotten | frozenset(current)) - wanted)

    def encode(self) -> str:
        return json.dumps(
            {"added": sorted(self.added), "forgotten": sorted(self.forgotten)}, indent=1
        )

    @staticmethod
    def decode(text: str) -> SavedTargets:
        """ValueError if ``text`` is not what ``encode`` writes."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        lists = [data.get("added", []), data.get("forgotten", [])]
        for items in lists:
            if not isinstance(items, list) or not all(isinstance(a, str) for a in items):
                raise ValueError("added and forgotten must be lists of addresses")
        return SavedTargets(frozenset(lists[0]), frozenset(lists[1]))


def load(state_dir: Path) -> SavedTargets:
    """The saved targets; none if there is no file, or it is unreadable (set aside, logged)."""
    path = state_dir / STATE_FILE
    try:
        return SavedTargets.decode(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return SavedTargets()
    except (OSError, ValueError) as e:
        try:
            aside = set_aside(path)
        except OSError:
            log.warning("saved targets in %s unreadable (%s); starting without them", path, e)
        else:
            log.warning("saved targets in %s unreadable (%s): moved to %s", path, e, aside.name)
        return SavedTargets()


def save(state_dir: Path, saved: SavedTargets) -> None:
    path = state_dir / STATE_FILE
    if saved == SavedTargets():
        path.unlink(missing_ok=True)
    else:
        write_atomically(path, saved.encode())
