"""Typed errors: one per lockd reply code (docs/protocol.md), and LockLost."""

from __future__ import annotations


class LockdError(Exception):
    """Any error from lockd or from talking to it."""


class Timeout(LockdError):
    """The lock was not granted within the timeout (or, for a try-lock, at once)."""


class Deadlock(LockdError):
    """Waiting would close a cycle of waits; ``session`` is another session on it."""

    def __init__(self, message: str, session: str = "") -> None:
        super().__init__(message)
        self.session = session


class TooManyLocks(LockdError):
    """The server holds its maximum number of locks (``--max-locks``)."""


class NoSession(LockdError):
    """No such session (never existed, or its grace ended), or it has a live connection."""


class ClusterDown(LockdError):
    """A cluster node could not commit the request (no quorum)."""


class AuthError(LockdError):
    """The auth key was refused."""


class HeldHere(LockdError):
    """This client already holds, or is acquiring, a conflicting lock on the key: one
    client is one session, and a session never waits for itself."""


class LockLost(LockdError):
    """The lock may no longer be held: the connection it was taken on was lost and not
    resumed within the session's grace, or it was released already."""


def from_reply(message: str) -> LockdError:
    """Maps a RESP error (as redis-py gives it) to a typed error by its code."""
    code, _, rest = message.partition(" ")
    if code == "DEADLOCK":
        return Deadlock(message, rest.rsplit(" ", 1)[-1])
    if code == "TOOMANYLOCKS":
        return TooManyLocks(message)
    if code in ("NOSESSION", "BUSYSESSION"):
        return NoSession(message)
    if code == "CLUSTERDOWN":
        return ClusterDown(message)
    if code in ("NOAUTH", "WRONGPASS") or "invalid username-password" in message:
        return AuthError(message)
    return LockdError(message)
