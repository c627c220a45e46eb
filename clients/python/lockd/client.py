"""The synchronous client: one connection, one lockd session."""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional, Sequence, Union

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import _common as c
from .errors import AuthError, LockdError, LockLost, Timeout, from_reply


class Lock(c.Acquisition):
    """Locks held by the client's session: one acquisition. ``release()`` (or leaving the
    ``with`` block, also on an exception) lets go of what it acquired and nothing a later
    acquisition holds: the release names this grant's fencing token."""

    def release(self) -> None:
        """Releases the locks; ``LockLost`` if they were let go already or may be lost."""
        for args in self._let_go():
            self._client._call(*args)

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.release()
        except LockdError:
            # Never hide the exception that left the block; without one, the user must
            # learn that the lock was lost while it ran.
            if exc_type is None:
                raise


class Client:
    """A connection to lockd and its session.

    ``addr`` is ``"host:port"``, or several (``"a:7531,b:7531,c:7531"`` or a list) for the
    nodes of a cluster: the first that answers is used, and :meth:`resume` moves to the
    next one. Calls from several threads are serialized (a waiting lock blocks the
    connection); threads that should wait for each other need a client each.
    """

    def __init__(
        self,
        addr: Union[str, Sequence[str]] = "127.0.0.1:7531",
        auth_key: str = "",
        *,
        connect_timeout: float = 5.0,
        ssl_ca_certs: Optional[str] = None,
    ) -> None:
        self._addrs = c.parse_addrs(addr)
        self._auth_key = auth_key
        self._connect_timeout = connect_timeout
        self._ssl_ca_certs = ssl_ca_certs
        self._mutex = threading.RLock()
        self._book = c.Book()
        self._generation = 0
        self._broken = False
        self._at = 0
        self._conn = self._open(0)
        self.session: str = c.text(self._call("SESSION"))

    # ---- connection ----

    def _open(self, start: int) -> "redis.Connection":
        last: Optional[Exception] = None
        for i in range(len(self._addrs)):
            at = (start + i) % len(self._addrs)
            host, port = self._addrs[at]
            kwargs: Dict[str, Any] = dict(
                host=host,
                port=port,
                password=self._auth_key or None,
                socket_connect_timeout=self._connect_timeout,
                socket_timeout=None,
                retry=Retry(NoBackoff(), 0),
                protocol=3,
            )
            cls: Any = redis.Connection
            if self._ssl_ca_certs:
                cls = redis.SSLConnection
                kwargs.update(ssl_ca_certs=self._ssl_ca_certs, ssl_cert_reqs="required")
            conn = cls(**kwargs)
            try:
                conn.connect()
            except redis.AuthenticationError as e:
                raise AuthError(str(e)) from e
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                last = e
                continue
            self._at = at
            return conn
        raise LockdError(f"cannot connect to {self._addrs}: {last}") from last

    def _call(self, *args: Any) -> Any:
        with self._mutex:
            if self._broken:
                raise LockLost("the connection to lockd was lost (call resume())")
            try:
                self._conn.send_command(*args)
                return self._conn.read_response()
            except redis.ResponseError as e:
                raise from_reply(str(e)) from None
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                self._broken = True
                self._conn.disconnect()
                raise LockLost("the connection to lockd was lost") from e

    def close(self) -> None:
        """Closes the connection: the session dies, and its locks go after its grace."""
        with self._mutex:
            self._conn.disconnect()
            self._broken = True

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def connection_lost(self) -> bool:
        return self._broken

    def resume(self) -> bool:
        """Connects again (to the next node, with several) and resumes the session:
        ``True`` if it and every lock survived; ``False`` if it had expired (a new session
        then, and every older lock is lost). Raises ``NoSession`` while a cluster has not
        yet declared the old node down: call again shortly."""
        with self._mutex:
            conn = self._open(self._at + 1)
            try:
                conn.send_command("SESSION", "RESUME", self.session)
                conn.read_response()
                resumed = True
            except redis.ResponseError as e:
                if not str(e).startswith("NOSESSION"):
                    conn.disconnect()
                    raise from_reply(str(e)) from None
                resumed = False
            self._conn, self._broken = conn, False
            if resumed:
                self._reconcile()
            else:
                self.session = c.text(self._call("SESSION"))
                self._generation += 1
                self._book.clear()
            return resumed

    def _reconcile(self) -> None:
        # A grant whose reply was lost with the old connection: no Lock owns it.
        for lk in self.locks():
            key, mode, token = lk["key"].encode(), lk["mode"], lk["token"]
            with self._book.mutex:
                h = self._book.locks.get((key, mode))
                if h is not None:
                    h.token = token
                    continue
            self._call(*c.release_args(mode, token, [key]))

    # ---- locks ----

    def lock(self, keys: c.Keys, mode: str = "ex", timeout: Optional[float] = 10.0) -> Lock:
        """Acquires ``keys`` in ``mode`` (``"sh"`` or ``"ex"``), all or nothing, waiting up
        to ``timeout`` seconds (0 or None: try once). ``Timeout`` if not granted."""
        got = self._acquire(keys, mode, timeout)
        if got is None:
            raise Timeout(f"not granted within {timeout} s")
        return got

    def try_lock(self, keys: c.Keys, mode: str = "ex") -> Optional[Lock]:
        """Tries once: the lock, or ``None`` if it is not free now."""
        return self._acquire(keys, mode, 0)

    def _acquire(self, keys: c.Keys, mode: str, timeout: Optional[float]) -> Optional[Lock]:
        ks, m = c.norm_keys(keys), c.norm_mode(mode)
        self._book.reserve(m, ks)
        try:
            token = self._call("ACQUIRE", m, c.timeout_ms(timeout), *ks)
            if token is None:
                return None
            return Lock(self, m, ks, int(token), self._book.granted(m, ks, int(token)))
        finally:
            self._book.unreserve(m, ks)

    def release_all(self) -> int:
        """Releases every lock of the session; earlier ``Lock`` objects become inert."""
        n = int(self._call("RELEASEALL"))
        self._book.clear()
        return n

    def set_grace(self, seconds: float) -> None:
        """How long the session keeps its locks after its connection is lost (capped by
        the server's ``--max-grace``)."""
        self._call("SESSION", "GRACE", int(seconds * 1000))

    # ---- introspection ----

    def inspect(self, key: Union[str, bytes]) -> Dict[str, List[Dict[str, Any]]]:
        """Holders and waiters of ``key``."""
        return c.key_info(self._call("INSPECT", key))

    def locks(self, session: Optional[str] = None) -> List[Dict[str, Any]]:
        """The locks of ``session`` (default: this one): key, mode, token."""
        r = self._call("LOCKS", *([session] if session else []))
        out = []
        for e in r:
            d = c.as_dict(e)
            out.append({"key": c.text(d["key"]), "mode": c.text(d["mode"]), "token": int(d["token"])})
        return out

    def stats(self) -> Dict[str, int]:
        return {k: int(v) for k, v in c.as_dict(self._call("STATS")).items()}

    def ping(self) -> None:
        self._call("PING")
