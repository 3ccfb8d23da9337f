"""Versions that only their owner bumps, and which updates of them are plausible.

Topology entries, DNS records and IPAM tokens are merged by keeping the highest version, and only
their owner ever bumps one. A forger holding the password could send someone else's item at
``MAX_VERSION``: it would win everywhere, and its owner could never bump past it again. So every
store drops an update whose version jumps implausibly far above the one it holds (the sender's
protocol error, counted), and an owner that sees its own item at a version it did not make bumps
past it, which stays possible because no accepted version is ever near the maximum.
"""

from __future__ import annotations

#: Versions up to here are always plausible: a long-lived peer's entry seen for the first time,
#: or a previous incarnation's seen by a restarted peer (which starts again at 1), may be far
#: past what we hold. 2**40 honest changes is more than any peer ever makes.
PLAUSIBLE_VERSION = 1 << 40
#: Above that, the most a version may rise over the one we hold of the same item in one update.
#: Each honest change bumps a version by one, so a larger jump is a forgery (an owner's real
#: entry outruns our copy only by the changes made while gossip could not reach us: 2**20 is
#: days of a link flapping every second). A forger thus needs about (2**63 - 2**40) / 2**20 =
#: 2**43 accepted updates in a row to push an entry to ``MAX_VERSION`` (where its owner could
#: no longer bump past it); one message at the maximum is simply dropped.
MAX_VERSION_JUMP = 1 << 20


def plausible_version(version: int, held: int | None) -> bool:
    """Whether an update to ``version`` is one its owner could have made since ``held``.

    ``held``: the version we hold of the same item (None: none). Shared by the stores whose
    items only their owner bumps (topology, DNS records, IPAM tokens).
    """
    return version <= PLAUSIBLE_VERSION or version - (held or 0) <= MAX_VERSION_JUMP
