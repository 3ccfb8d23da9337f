"""Errors that say whose fault they are: the user's, or a remote peer's."""

import re


class MeshnetError(Exception):
    """Base of every error meshnet raises on purpose."""


class UserError(MeshnetError):
    """A mistake the user can fix (bad value, missing privilege, unknown name).

    The CLI prints its message as one line and exits non-zero, without a traceback.
    """


class RemoteProtocolError(MeshnetError):
    """A peer sent something malformed, oversized, tampered or out of order.

    The shell that owns the connection drops it (or the datagram), logs one line and counts it.
    """


def first_meshnet_error(group: BaseExceptionGroup[BaseException]) -> MeshnetError | None:
    """The error to tell the user about, from inside trio's exception groups."""
    for e in group.exceptions:
        if isinstance(e, MeshnetError):
            return e
        if isinstance(e, BaseExceptionGroup):
            found = first_meshnet_error(e)
            if found is not None:
                return found
    return None


def bad_address(text: str, reason: str) -> UserError:
    """The one shape of every message about a malformed address: ``bad address 'TEXT': REASON``
    (attach, detach, run, expose, hide, dns-add, dns-remove, the API's answers, the kernel
    attach, and the Docker and CNI plugins)."""
    return UserError(f"bad address {text.strip()!r}: {reason}")


def why(value: str, error: ValueError, *, ipv6: bool = False) -> str:
    """``ipaddress``'s complaint about ``value`` as a reason for ``bad_address``: without the
    repeated text, and saying so when an IPv6 address is given where only IPv4 is taken
    (``ipv6``: where both families are)."""
    if ":" in value and not ipv6:
        return "IPv6 is not supported here yet; give an IPv4 address"
    message = re.sub(r" in '[^']*'$", "", str(error))
    if message.startswith(("Expected 4 octets", "'")):  # "... does not appear to be ..."
        return "not an IP address"
    return message
