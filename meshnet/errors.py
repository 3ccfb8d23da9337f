"""Errors that say whose fault they are: the user's, or a remote peer's."""


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
