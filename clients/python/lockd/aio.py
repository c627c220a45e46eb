"""The asyncio client: the same as :class:`lockd.Client`, awaited."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional, Sequence, Union

import redis
import redis.asyncio.connection as aconn
from redis.backoff import NoBackoff
from redis.asyncio.retry import Retry

from . import _common as c
from .errors import AuthError, LockdError, LockLost, Timeout, from_reply


class AsyncLock(c.Acquisition):
    """One acquisition (see :class:`lockd.Lock`); ``async with`` releases it on exit."""

    async def release(self) -> None:
        for args in self._let_go():
            await self._client._call(*args)

    async def __aenter__(self) -> "AsyncLock":
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            await self.release()
        except LockdError:
            if exc_type is None:
                raise


class AsyncClient:
    """A connection to lockd and its session; make it with ``await AsyncClient.connect(...)``."""

    def __init__(self, addr: Union[str, Sequence[str]], auth_key: str, connect_timeout: float) -> None:
        self._addrs = c.parse_addrs(addr)
        self._auth_key = auth_key
        self._connect_timeout = connect_timeout
        self._mutex = asyncio.Lock()
        self._book = c.Book()
        self._generation = 0
        self._broken = False
        self._at = 0
        self._conn: Any = None
        self.session = ""

    @classmethod
    async def connect(
        cls, addr: Union[str, Sequence[str]] = "127.0.0.1:7531", auth_key: str = "", *, connect_timeout: float = 5.0
    ) -> "AsyncClient":
        self = cls(addr, auth_key, connect_timeout)
        self._conn = await self._open(0)
        self.session = c.text(await self._call("SESSION"))
        return self

    async def _open(self, start: int) -> Any:
        last: Optional[Exception] = None
        for i in range(len(self._addrs)):
            at = (start + i) % len(self._addrs)
            host, port = self._addrs[at]
            conn = aconn.Connection(
                host=host,
                port=port,
                password=self._auth_key or None,
                socket_connect_timeout=self._connect_timeout,
                socket_timeout=None,
                retry=Retry(NoBackoff(), 0),
                protocol=3,
            )
            try:
                await conn.connect()
            except redis.AuthenticationError as e:
                raise AuthError(str(e)) from e
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                last = e
                continue
            self._at = at
            return conn
        raise LockdError(f"cannot connect to {self._addrs}: {last}") from last

    async def _call(self, *args: Any) -> Any:
        async with self._mutex:
            if self._broken:
                raise LockLost("the connection to lockd was lost (call resume())")
            try:
                await self._conn.send_command(*args)
                return await self._conn.read_response()
            except redis.ResponseError as e:
                raise from_reply(str(e)) from None
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                self._broken = True
                await self._conn.disconnect()
                raise LockLost("the connection to lockd was lost") from e

    async def close(self) -> None:
        await self._conn.disconnect()
        self._broken = True

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def connection_lost(self) -> bool:
        return self._broken

    async def resume(self) -> bool:
        """See :meth:`lockd.Client.resume`."""
        conn = await self._open(self._at + 1)
        try:
            await conn.send_command("SESSION", "RESUME", self.session)
            await conn.read_response()
            resumed = True
        except redis.ResponseError as e:
            if not str(e).startswith("NOSESSION"):
                await conn.disconnect()
                raise from_reply(str(e)) from None
            resumed = False
        self._conn, self._broken = conn, False
        if resumed:
            for lk in await self.locks():
                key, mode, token = lk["key"].encode(), lk["mode"], lk["token"]
                with self._book.mutex:
                    h = self._book.locks.get((key, mode))
                    if h is not None:
                        h.token = token
                        continue
                await self._call(*c.release_args(mode, token, [key]))
        else:
            self.session = c.text(await self._call("SESSION"))
            self._generation += 1
            self._book.clear()
        return resumed

    async def lock(self, keys: c.Keys, mode: str = "ex", timeout: Optional[float] = 10.0) -> AsyncLock:
        got = await self._acquire(keys, mode, timeout)
        if got is None:
            raise Timeout(f"not granted within {timeout} s")
        return got

    async def try_lock(self, keys: c.Keys, mode: str = "ex") -> Optional[AsyncLock]:
        return await self._acquire(keys, mode, 0)

    async def _acquire(self, keys: c.Keys, mode: str, timeout: Optional[float]) -> Optional[AsyncLock]:
        ks, m = c.norm_keys(keys), c.norm_mode(mode)
        self._book.reserve(m, ks)
        try:
            token = await self._call("ACQUIRE", m, c.timeout_ms(timeout), *ks)
            if token is None:
                return None
            return AsyncLock(self, m, ks, int(token), self._book.granted(m, ks, int(token)))
        finally:
            self._book.unreserve(m, ks)

    async def release_all(self) -> int:
        n = int(await self._call("RELEASEALL"))
        self._book.clear()
        return n

    async def set_grace(self, seconds: float) -> None:
        await self._call("SESSION", "GRACE", int(seconds * 1000))

    async def inspect(self, key: Union[str, bytes]) -> Dict[str, List[Dict[str, Any]]]:
        return c.key_info(await self._call("INSPECT", key))

    async def locks(self, session: Optional[str] = None) -> List[Dict[str, Any]]:
        r = await self._call("LOCKS", *([session] if session else []))
        return [
            {"key": c.text(d["key"]), "mode": c.text(d["mode"]), "token": int(d["token"])}
            for d in (c.as_dict(e) for e in r)
        ]

    async def stats(self) -> Dict[str, int]:
        return {k: int(v) for k, v in c.as_dict(await self._call("STATS")).items()}
