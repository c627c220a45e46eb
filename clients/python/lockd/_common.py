"""What the sync and asyncio clients share: addresses, arguments, replies, the book of
what the session holds."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .errors import HeldHere, LockLost

Keys = Union[str, bytes, Sequence[Union[str, bytes]]]

SH = "SH"
EX = "EX"


def parse_addrs(addr: Union[str, Sequence[str]]) -> List[Tuple[str, int]]:
    """``"host:port"``, ``"a:1,b:2"`` (the nodes of a cluster) or a list of them."""
    items = addr.split(",") if isinstance(addr, str) else list(addr)
    out = []
    for a in (i.strip() for i in items):
        if not a:
            continue
        host, _, port = a.rpartition(":")
        out.append((host.strip("[]") or "127.0.0.1", int(port)))
    if not out:
        raise ValueError(f"no address in {addr!r}")
    return out


def norm_keys(keys: Keys) -> List[bytes]:
    if isinstance(keys, (str, bytes)):
        keys = [keys]
    out = [k.encode() if isinstance(k, str) else bytes(k) for k in keys]
    if not out:
        raise ValueError("at least one key")
    return out


def norm_mode(mode: str) -> str:
    m = mode.upper()
    if m not in (SH, EX):
        raise ValueError(f"mode must be 'sh' or 'ex', not {mode!r}")
    return m


def timeout_ms(timeout: Optional[float]) -> int:
    """Seconds to the protocol's milliseconds; 0 is a try-lock (at least 1 ms otherwise)."""
    if timeout is None or timeout <= 0:
        return 0
    return max(1, int(timeout * 1000))


def text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def as_dict(v: Any) -> Dict[str, Any]:
    """A RESP3 map or a RESP2 flat list, with text keys."""
    if isinstance(v, dict):
        return {text(k): x for k, x in v.items()}
    it = iter(v)
    return {text(k): x for k, x in zip(it, it)}


def key_info(v: Any) -> Dict[str, List[Dict[str, Any]]]:
    d = as_dict(v)

    def entry(e: Any) -> Dict[str, Any]:
        return {k: (text(x) if isinstance(x, bytes) else x) for k, x in as_dict(e).items()}

    return {
        "holders": [entry(h) for h in d.get("holders", [])],
        "waiters": [entry(w) for w in d.get("waiters", [])],
    }


@dataclass
class Held:
    count: int
    token: int
    epoch: int


@dataclass
class Book:
    """What this client's session holds, per (key, mode), and what it is acquiring; the
    same rules as lockd-client (Rust): an acquisition that conflicts with a lock held or
    under way is refused, since the server never makes a session wait for itself."""

    locks: Dict[Tuple[bytes, str], Held] = field(default_factory=dict)
    pending: Dict[Tuple[bytes, str], int] = field(default_factory=dict)
    epochs: int = 0
    mutex: threading.Lock = field(default_factory=threading.Lock)

    def _busy(self, key: bytes, mode: str) -> bool:
        h = self.locks.get((key, mode))
        return (h is not None and h.count > 0) or (key, mode) in self.pending

    def reserve(self, mode: str, keys: List[bytes]) -> None:
        with self.mutex:
            for k in keys:
                if self._busy(k, EX) or (mode == EX and self._busy(k, SH)):
                    raise HeldHere(
                        f"this client already holds or is acquiring a conflicting lock on "
                        f"{text(k)!r} (one client per concurrent locker)"
                    )
            for k in keys:
                self.pending[(k, mode)] = self.pending.get((k, mode), 0) + 1

    def unreserve(self, mode: str, keys: List[bytes]) -> None:
        with self.mutex:
            for k in keys:
                n = self.pending.get((k, mode), 0) - 1
                if n > 0:
                    self.pending[(k, mode)] = n
                else:
                    self.pending.pop((k, mode), None)

    def granted(self, mode: str, keys: List[bytes], token: int) -> List[int]:
        with self.mutex:
            epochs = []
            for k in keys:
                h = self.locks.get((k, mode))
                if h is None:
                    self.epochs += 1
                    h = self.locks[(k, mode)] = Held(0, token, self.epochs)
                h.count += 1
                h.token = token
                epochs.append(h.epoch)
            return epochs

    def unref(self, mode: str, keys: List[bytes], epochs: List[int]) -> Tuple[List[Tuple[int, List[bytes]]], bool]:
        """A guard lets go: the locks nobody counts on any more, grouped by token, and
        whether the guard was inert (its locks let go already)."""
        with self.mutex:
            free: Dict[int, List[bytes]] = {}
            inert = False
            for k, e in zip(keys, epochs):
                h = self.locks.get((k, mode))
                if h is None or h.epoch != e:
                    inert = True
                    continue
                h.count -= 1
                if h.count == 0:
                    del self.locks[(k, mode)]
                    free.setdefault(h.token, []).append(k)
            return list(free.items()), inert

    def clear(self) -> None:
        with self.mutex:
            self.locks.clear()


class Acquisition:
    """What a lock object of either client is: one acquisition, counted in its client's
    book; only how the release is sent differs."""

    def __init__(self, client: Any, mode: str, keys: List[bytes], token: int, epochs: List[int]) -> None:
        self._client = client
        self.mode = mode
        self.keys = keys
        self.token = token
        self._epochs = epochs
        self._generation = client._generation
        self._released = False

    @property
    def lost(self) -> bool:
        """Whether the lock may no longer be held: its connection was lost and the session
        not resumed since, or the session is gone. Check it before acting on the resource;
        the fencing token protects against the rest."""
        return self._client._generation != self._generation or self._client._broken

    def _let_go(self) -> List[Tuple[int, List[bytes]]]:
        """Marks the acquisition released: the RELEASE TOKEN requests to send (none when
        another lock of the client still counts on them), or ``LockLost``."""
        if self._released:
            return []
        self._released = True
        lost = self.lost
        free, inert = self._client._book.unref(self.mode, self.keys, self._epochs)
        if lost or inert:
            raise LockLost("this lock was let go already, or its connection was lost")
        return [release_args(self.mode, token, keys) for token, keys in free]

    def __repr__(self) -> str:
        keys = [text(k) for k in self.keys]
        return f"{type(self).__name__}(mode={self.mode}, keys={keys}, token={self.token})"


def release_args(mode: str, token: int, keys: List[bytes]) -> List[Any]:
    return ["RELEASE", "TOKEN", token, mode, *keys]
