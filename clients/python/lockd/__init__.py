"""lockd: locks from a lockd server, over its native protocol (RESP, through redis-py).

    import lockd

    client = lockd.Client("127.0.0.1:7531", auth_key="s3cret")
    with client.lock("invoices", timeout=5) as lock:
        write_invoices(fencing_token=lock.token)

Shared (``mode="sh"``) and exclusive locks, many keys at once (all or nothing), try-locks,
waits with a timeout, fencing tokens, the session's resume after a lost connection, and an
asyncio API (:class:`lockd.aio.AsyncClient`).
"""

from .client import Client, Lock
from .errors import (
    AuthError,
    ClusterDown,
    Deadlock,
    HeldHere,
    LockdError,
    LockLost,
    NoSession,
    Timeout,
    TooManyLocks,
)

__all__ = [
    "Client",
    "Lock",
    "AuthError",
    "ClusterDown",
    "Deadlock",
    "HeldHere",
    "LockdError",
    "LockLost",
    "NoSession",
    "Timeout",
    "TooManyLocks",
]
